"""The data path from a storage daemon to the loss, in small resumable stages.

``SelectionSource`` (stream a selection, weights attached once) → ``Rebatch`` (exactly ``batch_size`` samples) →
``Decode`` (bytes → tensors) → ``Prefetch`` (a background thread). Every stage is an iterator with
``state_dict()``/``load_state_dict()``; a state is ``{"position": samples consumed downstream}``, so saving the last
stage and loading it into a fresh chain resumes exactly after the last batch the consumer took. ``nessa train`` and
:class:`nessa.data.SelectionDataset` are both built from these stages.
"""

from nessa.pipeline.base import Stage
from nessa.pipeline.decode import Decode
from nessa.pipeline.prefetch import Prefetch, prefetch_iter
from nessa.pipeline.rebatch import Rebatch, SampleBatch
from nessa.pipeline.source import SelectionSource

__all__ = ["Decode", "Prefetch", "Rebatch", "SampleBatch", "SelectionSource", "Stage", "prefetch_iter"]
