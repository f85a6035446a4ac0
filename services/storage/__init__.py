"""The storage daemon: gRPC servicer, selection jobs and sample streaming."""
