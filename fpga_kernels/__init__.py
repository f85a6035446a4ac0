"""OpenCL C kernel sources (``*.cl``), shipped as package data of ``nessa.fpga_kernels``."""
