"""Generated protobuf and gRPC code for nessa.v1 (do not edit; run `make protos`)."""
