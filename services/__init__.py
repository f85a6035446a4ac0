"""Server-side processes of NeSSA (installed as ``nessa.services``)."""
