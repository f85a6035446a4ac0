from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Remainder(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REMAINDER_KEEP: _ClassVar[Remainder]
    REMAINDER_PAD: _ClassVar[Remainder]
    REMAINDER_DROP: _ClassVar[Remainder]
REMAINDER_KEEP: Remainder
REMAINDER_PAD: Remainder
REMAINDER_DROP: Remainder

class ListDatasetsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets",)
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[DatasetInfo]
    def __init__(self, datasets: _Optional[_Iterable[_Union[DatasetInfo, _Mapping]]] = ...) -> None: ...

class DescribeDatasetRequest(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    def __init__(self, dataset: _Optional[str] = ...) -> None: ...

class DatasetInfo(_message.Message):
    __slots__ = ("name", "num_samples", "num_classes", "class_names", "class_counts", "codec", "sample_shape", "dtype", "total_bytes", "num_shards", "proxy_version", "source_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    CLASS_COUNTS_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    PROXY_VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    num_samples: int
    num_classes: int
    class_names: _containers.RepeatedScalarFieldContainer[str]
    class_counts: _containers.RepeatedScalarFieldContainer[int]
    codec: str
    sample_shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    total_bytes: int
    num_shards: int
    proxy_version: int
    source_json: str
    def __init__(self, name: _Optional[str] = ..., num_samples: _Optional[int] = ..., num_classes: _Optional[int] = ..., class_names: _Optional[_Iterable[str]] = ..., class_counts: _Optional[_Iterable[int]] = ..., codec: _Optional[str] = ..., sample_shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., total_bytes: _Optional[int] = ..., num_shards: _Optional[int] = ..., proxy_version: _Optional[int] = ..., source_json: _Optional[str] = ...) -> None: ...

class ProxyChunk(_message.Message):
    __slots__ = ("dataset", "version", "data", "total_size", "sha256")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    version: int
    data: bytes
    total_size: int
    sha256: str
    def __init__(self, dataset: _Optional[str] = ..., version: _Optional[int] = ..., data: _Optional[bytes] = ..., total_size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class ProxyAck(_message.Message):
    __slots__ = ("dataset", "version", "size", "sha256", "previous_version")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    version: int
    size: int
    sha256: str
    previous_version: int
    def __init__(self, dataset: _Optional[str] = ..., version: _Optional[int] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., previous_version: _Optional[int] = ...) -> None: ...

class SelectRequest(_message.Message):
    __slots__ = ("dataset", "method", "fraction", "count", "budget_rule", "seed", "options", "proxy_version", "candidates", "engine", "session")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DATASET_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    BUDGET_RULE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    PROXY_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    method: str
    fraction: float
    count: int
    budget_rule: str
    seed: int
    options: _containers.ScalarMap[str, str]
    proxy_version: int
    candidates: _containers.RepeatedScalarFieldContainer[int]
    engine: str
    session: str
    def __init__(self, dataset: _Optional[str] = ..., method: _Optional[str] = ..., fraction: _Optional[float] = ..., count: _Optional[int] = ..., budget_rule: _Optional[str] = ..., seed: _Optional[int] = ..., options: _Optional[_Mapping[str, str]] = ..., proxy_version: _Optional[int] = ..., candidates: _Optional[_Iterable[int]] = ..., engine: _Optional[str] = ..., session: _Optional[str] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("read_seconds", "proxy_forward_seconds", "selection_seconds", "total_seconds")
    READ_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PROXY_FORWARD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SELECTION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    read_seconds: float
    proxy_forward_seconds: float
    selection_seconds: float
    total_seconds: float
    def __init__(self, read_seconds: _Optional[float] = ..., proxy_forward_seconds: _Optional[float] = ..., selection_seconds: _Optional[float] = ..., total_seconds: _Optional[float] = ...) -> None: ...

class Selection(_message.Message):
    __slots__ = ("id", "dataset", "method", "indices", "weights", "objective", "proxy_version", "timings", "class_counts", "num_candidates", "size", "selected_bytes", "candidate_bytes", "inline", "cached", "options_json", "extras_json", "budget_rule", "session", "session_round")
    class ClassCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    PROXY_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    CLASS_COUNTS_FIELD_NUMBER: _ClassVar[int]
    NUM_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SELECTED_BYTES_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_BYTES_FIELD_NUMBER: _ClassVar[int]
    INLINE_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_JSON_FIELD_NUMBER: _ClassVar[int]
    EXTRAS_JSON_FIELD_NUMBER: _ClassVar[int]
    BUDGET_RULE_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    SESSION_ROUND_FIELD_NUMBER: _ClassVar[int]
    id: str
    dataset: str
    method: str
    indices: _containers.RepeatedScalarFieldContainer[int]
    weights: _containers.RepeatedScalarFieldContainer[float]
    objective: float
    proxy_version: int
    timings: Timings
    class_counts: _containers.ScalarMap[int, int]
    num_candidates: int
    size: int
    selected_bytes: int
    candidate_bytes: int
    inline: bool
    cached: bool
    options_json: str
    extras_json: str
    budget_rule: str
    session: str
    session_round: int
    def __init__(self, id: _Optional[str] = ..., dataset: _Optional[str] = ..., method: _Optional[str] = ..., indices: _Optional[_Iterable[int]] = ..., weights: _Optional[_Iterable[float]] = ..., objective: _Optional[float] = ..., proxy_version: _Optional[int] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., class_counts: _Optional[_Mapping[int, int]] = ..., num_candidates: _Optional[int] = ..., size: _Optional[int] = ..., selected_bytes: _Optional[int] = ..., candidate_bytes: _Optional[int] = ..., inline: _Optional[bool] = ..., cached: _Optional[bool] = ..., options_json: _Optional[str] = ..., extras_json: _Optional[str] = ..., budget_rule: _Optional[str] = ..., session: _Optional[str] = ..., session_round: _Optional[int] = ...) -> None: ...

class GetSelectionRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListSelectionsRequest(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    def __init__(self, dataset: _Optional[str] = ...) -> None: ...

class ListSelectionsResponse(_message.Message):
    __slots__ = ("selections",)
    SELECTIONS_FIELD_NUMBER: _ClassVar[int]
    selections: _containers.RepeatedCompositeFieldContainer[Selection]
    def __init__(self, selections: _Optional[_Iterable[_Union[Selection, _Mapping]]] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SessionInfo(_message.Message):
    __slots__ = ("session", "dataset", "method", "rounds", "parts", "state_bytes", "updated_unix")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    STATE_BYTES_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    session: str
    dataset: str
    method: str
    rounds: int
    parts: int
    state_bytes: int
    updated_unix: float
    def __init__(self, session: _Optional[str] = ..., dataset: _Optional[str] = ..., method: _Optional[str] = ..., rounds: _Optional[int] = ..., parts: _Optional[int] = ..., state_bytes: _Optional[int] = ..., updated_unix: _Optional[float] = ...) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("sessions",)
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[SessionInfo]
    def __init__(self, sessions: _Optional[_Iterable[_Union[SessionInfo, _Mapping]]] = ...) -> None: ...

class Partition(_message.Message):
    __slots__ = ("world_size", "rank", "num_workers", "worker", "block_size", "skip", "worker_skip", "remainder")
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    NUM_WORKERS_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    SKIP_FIELD_NUMBER: _ClassVar[int]
    WORKER_SKIP_FIELD_NUMBER: _ClassVar[int]
    REMAINDER_FIELD_NUMBER: _ClassVar[int]
    world_size: int
    rank: int
    num_workers: int
    worker: int
    block_size: int
    skip: int
    worker_skip: int
    remainder: Remainder
    def __init__(self, world_size: _Optional[int] = ..., rank: _Optional[int] = ..., num_workers: _Optional[int] = ..., worker: _Optional[int] = ..., block_size: _Optional[int] = ..., skip: _Optional[int] = ..., worker_skip: _Optional[int] = ..., remainder: _Optional[_Union[Remainder, str]] = ...) -> None: ...

class IndexList(_message.Message):
    __slots__ = ("indices",)
    INDICES_FIELD_NUMBER: _ClassVar[int]
    indices: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, indices: _Optional[_Iterable[int]] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("dataset", "selection_id", "indices", "batch_size", "shuffle_seed", "cursor", "max_batch_bytes", "partition", "metadata_only")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SELECTION_ID_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHUFFLE_SEED_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_BYTES_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    METADATA_ONLY_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    selection_id: str
    indices: IndexList
    batch_size: int
    shuffle_seed: int
    cursor: str
    max_batch_bytes: int
    partition: Partition
    metadata_only: bool
    def __init__(self, dataset: _Optional[str] = ..., selection_id: _Optional[str] = ..., indices: _Optional[_Union[IndexList, _Mapping]] = ..., batch_size: _Optional[int] = ..., shuffle_seed: _Optional[int] = ..., cursor: _Optional[str] = ..., max_batch_bytes: _Optional[int] = ..., partition: _Optional[_Union[Partition, _Mapping]] = ..., metadata_only: _Optional[bool] = ...) -> None: ...

class SampleBatch(_message.Message):
    __slots__ = ("indices", "labels", "weights", "offsets", "piece_offset", "sample_size", "cursor", "position", "total", "data")
    INDICES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    PIECE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    indices: bytes
    labels: bytes
    weights: bytes
    offsets: bytes
    piece_offset: int
    sample_size: int
    cursor: str
    position: int
    total: int
    data: bytes
    def __init__(self, indices: _Optional[bytes] = ..., labels: _Optional[bytes] = ..., weights: _Optional[bytes] = ..., offsets: _Optional[bytes] = ..., piece_offset: _Optional[int] = ..., sample_size: _Optional[int] = ..., cursor: _Optional[str] = ..., position: _Optional[int] = ..., total: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class DistillRequest(_message.Message):
    __slots__ = ("dataset", "method", "ipc", "stages", "seed", "options", "output", "overwrite")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DATASET_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    IPC_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    OVERWRITE_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    method: str
    ipc: int
    stages: int
    seed: int
    options: _containers.ScalarMap[str, str]
    output: str
    overwrite: bool
    def __init__(self, dataset: _Optional[str] = ..., method: _Optional[str] = ..., ipc: _Optional[int] = ..., stages: _Optional[int] = ..., seed: _Optional[int] = ..., options: _Optional[_Mapping[str, str]] = ..., output: _Optional[str] = ..., overwrite: _Optional[bool] = ...) -> None: ...

class DistillJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class DistillJob(_message.Message):
    __slots__ = ("job_id", "dataset", "method", "ipc", "stages", "seed", "state", "progress", "phase", "error", "output", "stage_datasets", "learned_lr", "seconds", "real_bytes_read", "synthetic_bytes_written")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    IPC_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    STAGE_DATASETS_FIELD_NUMBER: _ClassVar[int]
    LEARNED_LR_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    REAL_BYTES_READ_FIELD_NUMBER: _ClassVar[int]
    SYNTHETIC_BYTES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    dataset: str
    method: str
    ipc: int
    stages: int
    seed: int
    state: str
    progress: float
    phase: str
    error: str
    output: str
    stage_datasets: _containers.RepeatedScalarFieldContainer[str]
    learned_lr: _containers.RepeatedScalarFieldContainer[float]
    seconds: float
    real_bytes_read: int
    synthetic_bytes_written: int
    def __init__(self, job_id: _Optional[str] = ..., dataset: _Optional[str] = ..., method: _Optional[str] = ..., ipc: _Optional[int] = ..., stages: _Optional[int] = ..., seed: _Optional[int] = ..., state: _Optional[str] = ..., progress: _Optional[float] = ..., phase: _Optional[str] = ..., error: _Optional[str] = ..., output: _Optional[str] = ..., stage_datasets: _Optional[_Iterable[str]] = ..., learned_lr: _Optional[_Iterable[float]] = ..., seconds: _Optional[float] = ..., real_bytes_read: _Optional[int] = ..., synthetic_bytes_written: _Optional[int] = ...) -> None: ...
