from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_INT8: _ClassVar[DType]
    DTYPE_UINT8: _ClassVar[DType]

class OpType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OP_UNSPECIFIED: _ClassVar[OpType]
    OP_CONV1D: _ClassVar[OpType]
    OP_CONV2D: _ClassVar[OpType]
    OP_LINEAR: _ClassVar[OpType]
    OP_RELU: _ClassVar[OpType]
    OP_ADD: _ClassVar[OpType]
    OP_MAXPOOL: _ClassVar[OpType]
    OP_AVGPOOL: _ClassVar[OpType]
    OP_GLOBAL_AVGPOOL: _ClassVar[OpType]
    OP_FLATTEN: _ClassVar[OpType]
    OP_GELU: _ClassVar[OpType]
    OP_SILU: _ClassVar[OpType]
    OP_SIGMOID: _ClassVar[OpType]
    OP_TANH: _ClassVar[OpType]
    OP_SOFTMAX: _ClassVar[OpType]
    OP_LAYERNORM: _ClassVar[OpType]
    OP_GROUPNORM: _ClassVar[OpType]
    OP_MATMUL: _ClassVar[OpType]
    OP_ATTENTION: _ClassVar[OpType]
    OP_RESHAPE: _ClassVar[OpType]
    OP_PERMUTE: _ClassVar[OpType]
    OP_CONCAT: _ClassVar[OpType]
    OP_MUL: _ClassVar[OpType]
    OP_SCALE: _ClassVar[OpType]
    OP_CONSTANT: _ClassVar[OpType]
    OP_EMBEDDING: _ClassVar[OpType]
    OP_SLICE: _ClassVar[OpType]
    OP_MEAN: _ClassVar[OpType]
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_INT8: DType
DTYPE_UINT8: DType
OP_UNSPECIFIED: OpType
OP_CONV1D: OpType
OP_CONV2D: OpType
OP_LINEAR: OpType
OP_RELU: OpType
OP_ADD: OpType
OP_MAXPOOL: OpType
OP_AVGPOOL: OpType
OP_GLOBAL_AVGPOOL: OpType
OP_FLATTEN: OpType
OP_GELU: OpType
OP_SILU: OpType
OP_SIGMOID: OpType
OP_TANH: OpType
OP_SOFTMAX: OpType
OP_LAYERNORM: OpType
OP_GROUPNORM: OpType
OP_MATMUL: OpType
OP_ATTENTION: OpType
OP_RESHAPE: OpType
OP_PERMUTE: OpType
OP_CONCAT: OpType
OP_MUL: OpType
OP_SCALE: OpType
OP_CONSTANT: OpType
OP_EMBEDDING: OpType
OP_SLICE: OpType
OP_MEAN: OpType

class InputSpec(_message.Message):
    __slots__ = ("shape", "dtype", "scale", "mean", "std", "image")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    scale: float
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    image: ImagePrep
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., scale: _Optional[float] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ..., image: _Optional[_Union[ImagePrep, _Mapping]] = ...) -> None: ...

class ImagePrep(_message.Message):
    __slots__ = ("mode", "resize", "height", "width")
    MODE_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    mode: str
    resize: int
    height: int
    width: int
    def __init__(self, mode: _Optional[str] = ..., resize: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("name", "shape", "dtype", "data", "scales")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SCALES_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    data: bytes
    scales: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., data: _Optional[bytes] = ..., scales: _Optional[_Iterable[float]] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("name", "op", "inputs", "weight", "bias", "kernel_size", "stride", "padding", "source", "dims", "alpha", "beta", "eps", "groups")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    BIAS_FIELD_NUMBER: _ClassVar[int]
    KERNEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    PADDING_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    EPS_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    name: str
    op: OpType
    inputs: _containers.RepeatedScalarFieldContainer[str]
    weight: str
    bias: str
    kernel_size: _containers.RepeatedScalarFieldContainer[int]
    stride: _containers.RepeatedScalarFieldContainer[int]
    padding: _containers.RepeatedScalarFieldContainer[int]
    source: str
    dims: _containers.RepeatedScalarFieldContainer[int]
    alpha: float
    beta: float
    eps: float
    groups: int
    def __init__(self, name: _Optional[str] = ..., op: _Optional[_Union[OpType, str]] = ..., inputs: _Optional[_Iterable[str]] = ..., weight: _Optional[str] = ..., bias: _Optional[str] = ..., kernel_size: _Optional[_Iterable[int]] = ..., stride: _Optional[_Iterable[int]] = ..., padding: _Optional[_Iterable[int]] = ..., source: _Optional[str] = ..., dims: _Optional[_Iterable[int]] = ..., alpha: _Optional[float] = ..., beta: _Optional[float] = ..., eps: _Optional[float] = ..., groups: _Optional[int] = ...) -> None: ...

class Proxy(_message.Message):
    __slots__ = ("format_version", "version", "input", "num_classes", "tensors", "nodes", "output", "embedding", "producer", "program", "program_reason", "features", "feature_indices", "checksum")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_REASON_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_INDICES_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    version: int
    input: InputSpec
    num_classes: int
    tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    output: str
    embedding: str
    producer: str
    program: bytes
    program_reason: str
    features: Tensor
    feature_indices: _containers.RepeatedScalarFieldContainer[int]
    checksum: str
    def __init__(self, format_version: _Optional[int] = ..., version: _Optional[int] = ..., input: _Optional[_Union[InputSpec, _Mapping]] = ..., num_classes: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ..., output: _Optional[str] = ..., embedding: _Optional[str] = ..., producer: _Optional[str] = ..., program: _Optional[bytes] = ..., program_reason: _Optional[str] = ..., features: _Optional[_Union[Tensor, _Mapping]] = ..., feature_indices: _Optional[_Iterable[int]] = ..., checksum: _Optional[str] = ...) -> None: ...
