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
    DTYPE_FLOAT64: _ClassVar[DType]

class Op(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OP_UNSPECIFIED: _ClassVar[Op]
    OP_VALUE: _ClassVar[Op]
    OP_GRAD: _ClassVar[Op]
    OP_JACOBIAN: _ClassVar[Op]
    OP_HESSIAN: _ClassVar[Op]
    OP_VJP: _ClassVar[Op]
    OP_JVP: _ClassVar[Op]
    OP_HVP: _ClassVar[Op]

class JacobianMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JACOBIAN_MODE_AUTO: _ClassVar[JacobianMode]
    JACOBIAN_MODE_FORWARD: _ClassVar[JacobianMode]
    JACOBIAN_MODE_REVERSE: _ClassVar[JacobianMode]

class Verify(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERIFY_DEFAULT: _ClassVar[Verify]
    VERIFY_ON: _ClassVar[Verify]
    VERIFY_OFF: _ClassVar[Verify]

class ExecutionPath(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXECUTION_PATH_UNSPECIFIED: _ClassVar[ExecutionPath]
    EXECUTION_PATH_VMAP: _ClassVar[ExecutionPath]
    EXECUTION_PATH_PER_POINT: _ClassVar[ExecutionPath]
    EXECUTION_PATH_SINGLE: _ClassVar[ExecutionPath]

class CheckKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHECK_KIND_UNSPECIFIED: _ClassVar[CheckKind]
    CHECK_KIND_FINITE_DIFFERENCE: _ClassVar[CheckKind]
    CHECK_KIND_CLAIMED_GRAD: _ClassVar[CheckKind]
    CHECK_KIND_CLAIMED_JACOBIAN: _ClassVar[CheckKind]
    CHECK_KIND_CLAIMED_HESSIAN: _ClassVar[CheckKind]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT64: DType
OP_UNSPECIFIED: Op
OP_VALUE: Op
OP_GRAD: Op
OP_JACOBIAN: Op
OP_HESSIAN: Op
OP_VJP: Op
OP_JVP: Op
OP_HVP: Op
JACOBIAN_MODE_AUTO: JacobianMode
JACOBIAN_MODE_FORWARD: JacobianMode
JACOBIAN_MODE_REVERSE: JacobianMode
VERIFY_DEFAULT: Verify
VERIFY_ON: Verify
VERIFY_OFF: Verify
EXECUTION_PATH_UNSPECIFIED: ExecutionPath
EXECUTION_PATH_VMAP: ExecutionPath
EXECUTION_PATH_PER_POINT: ExecutionPath
EXECUTION_PATH_SINGLE: ExecutionPath
CHECK_KIND_UNSPECIFIED: CheckKind
CHECK_KIND_FINITE_DIFFERENCE: CheckKind
CHECK_KIND_CLAIMED_GRAD: CheckKind
CHECK_KIND_CLAIMED_JACOBIAN: CheckKind
CHECK_KIND_CLAIMED_HESSIAN: CheckKind
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data", "shared_memory")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    shared_memory: SharedMemoryRef
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., shared_memory: _Optional[_Union[SharedMemoryRef, _Mapping]] = ...) -> None: ...

class TensorPiece(_message.Message):
    __slots__ = ("slot", "offset", "data")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    slot: int
    offset: int
    data: bytes
    def __init__(self, slot: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class ComputeRequest(_message.Message):
    __slots__ = ("function", "inputs", "ops", "wrt", "batched", "dtype", "jacobian_mode", "chunk_size", "cotangent", "tangents", "vector", "verify", "output")
    class InputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    class TangentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    class VectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    WRT_FIELD_NUMBER: _ClassVar[int]
    BATCHED_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    JACOBIAN_MODE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    COTANGENT_FIELD_NUMBER: _ClassVar[int]
    TANGENTS_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    VERIFY_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    function: str
    inputs: _containers.MessageMap[str, Tensor]
    ops: _containers.RepeatedScalarFieldContainer[Op]
    wrt: _containers.RepeatedScalarFieldContainer[str]
    batched: bool
    dtype: DType
    jacobian_mode: JacobianMode
    chunk_size: int
    cotangent: Tensor
    tangents: _containers.MessageMap[str, Tensor]
    vector: _containers.MessageMap[str, Tensor]
    verify: Verify
    output: SharedMemoryRef
    def __init__(self, function: _Optional[str] = ..., inputs: _Optional[_Mapping[str, Tensor]] = ..., ops: _Optional[_Iterable[_Union[Op, str]]] = ..., wrt: _Optional[_Iterable[str]] = ..., batched: _Optional[bool] = ..., dtype: _Optional[_Union[DType, str]] = ..., jacobian_mode: _Optional[_Union[JacobianMode, str]] = ..., chunk_size: _Optional[int] = ..., cotangent: _Optional[_Union[Tensor, _Mapping]] = ..., tangents: _Optional[_Mapping[str, Tensor]] = ..., vector: _Optional[_Mapping[str, Tensor]] = ..., verify: _Optional[_Union[Verify, str]] = ..., output: _Optional[_Union[SharedMemoryRef, _Mapping]] = ...) -> None: ...

class Output(_message.Message):
    __slots__ = ("input", "input2", "tensor")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    INPUT2_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    input: str
    input2: str
    tensor: Tensor
    def __init__(self, input: _Optional[str] = ..., input2: _Optional[str] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class OpResult(_message.Message):
    __slots__ = ("op", "outputs")
    OP_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    op: Op
    outputs: _containers.RepeatedCompositeFieldContainer[Output]
    def __init__(self, op: _Optional[_Union[Op, str]] = ..., outputs: _Optional[_Iterable[_Union[Output, _Mapping]]] = ...) -> None: ...

class Certificate(_message.Message):
    __slots__ = ("disagreement", "tolerance", "checks", "points", "skipped")
    DISAGREEMENT_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    disagreement: float
    tolerance: float
    checks: _containers.RepeatedScalarFieldContainer[str]
    points: int
    skipped: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, disagreement: _Optional[float] = ..., tolerance: _Optional[float] = ..., checks: _Optional[_Iterable[str]] = ..., points: _Optional[int] = ..., skipped: _Optional[_Iterable[str]] = ...) -> None: ...

class ComputeMetadata(_message.Message):
    __slots__ = ("execution_path", "unconnected", "out_shape", "chunks", "workers", "compute_seconds", "wall_seconds", "jacobian_mode", "warnings", "points", "certificate", "strategy", "routes", "lane")
    EXECUTION_PATH_FIELD_NUMBER: _ClassVar[int]
    UNCONNECTED_FIELD_NUMBER: _ClassVar[int]
    OUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    JACOBIAN_MODE_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    LANE_FIELD_NUMBER: _ClassVar[int]
    execution_path: ExecutionPath
    unconnected: _containers.RepeatedScalarFieldContainer[str]
    out_shape: _containers.RepeatedScalarFieldContainer[int]
    chunks: int
    workers: int
    compute_seconds: float
    wall_seconds: float
    jacobian_mode: str
    warnings: _containers.RepeatedScalarFieldContainer[str]
    points: int
    certificate: Certificate
    strategy: str
    routes: _containers.RepeatedScalarFieldContainer[str]
    lane: str
    def __init__(self, execution_path: _Optional[_Union[ExecutionPath, str]] = ..., unconnected: _Optional[_Iterable[str]] = ..., out_shape: _Optional[_Iterable[int]] = ..., chunks: _Optional[int] = ..., workers: _Optional[int] = ..., compute_seconds: _Optional[float] = ..., wall_seconds: _Optional[float] = ..., jacobian_mode: _Optional[str] = ..., warnings: _Optional[_Iterable[str]] = ..., points: _Optional[int] = ..., certificate: _Optional[_Union[Certificate, _Mapping]] = ..., strategy: _Optional[str] = ..., routes: _Optional[_Iterable[str]] = ..., lane: _Optional[str] = ...) -> None: ...

class ComputeResponse(_message.Message):
    __slots__ = ("results", "metadata")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[OpResult]
    metadata: ComputeMetadata
    def __init__(self, results: _Optional[_Iterable[_Union[OpResult, _Mapping]]] = ..., metadata: _Optional[_Union[ComputeMetadata, _Mapping]] = ...) -> None: ...

class ComputeRequestPart(_message.Message):
    __slots__ = ("header", "piece")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PIECE_FIELD_NUMBER: _ClassVar[int]
    header: ComputeRequest
    piece: TensorPiece
    def __init__(self, header: _Optional[_Union[ComputeRequest, _Mapping]] = ..., piece: _Optional[_Union[TensorPiece, _Mapping]] = ...) -> None: ...

class ComputeResponsePart(_message.Message):
    __slots__ = ("header", "piece", "metadata")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PIECE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    header: ComputeResponse
    piece: TensorPiece
    metadata: ComputeMetadata
    def __init__(self, header: _Optional[_Union[ComputeResponse, _Mapping]] = ..., piece: _Optional[_Union[TensorPiece, _Mapping]] = ..., metadata: _Optional[_Union[ComputeMetadata, _Mapping]] = ...) -> None: ...

class Distribution(_message.Message):
    __slots__ = ("uniform", "normal")
    UNIFORM_FIELD_NUMBER: _ClassVar[int]
    NORMAL_FIELD_NUMBER: _ClassVar[int]
    uniform: Uniform
    normal: Normal
    def __init__(self, uniform: _Optional[_Union[Uniform, _Mapping]] = ..., normal: _Optional[_Union[Normal, _Mapping]] = ...) -> None: ...

class Uniform(_message.Message):
    __slots__ = ("low", "high")
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    low: float
    high: float
    def __init__(self, low: _Optional[float] = ..., high: _Optional[float] = ...) -> None: ...

class Normal(_message.Message):
    __slots__ = ("mean", "std")
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    mean: float
    std: float
    def __init__(self, mean: _Optional[float] = ..., std: _Optional[float] = ...) -> None: ...

class SampleSpec(_message.Message):
    __slots__ = ("distribution", "shape", "count", "seed", "dtype")
    DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    distribution: Distribution
    shape: _containers.RepeatedScalarFieldContainer[int]
    count: int
    seed: int
    dtype: DType
    def __init__(self, distribution: _Optional[_Union[Distribution, _Mapping]] = ..., shape: _Optional[_Iterable[int]] = ..., count: _Optional[int] = ..., seed: _Optional[int] = ..., dtype: _Optional[_Union[DType, str]] = ...) -> None: ...

class InputSpec(_message.Message):
    __slots__ = ("tensor", "sample")
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    tensor: Tensor
    sample: SampleSpec
    def __init__(self, tensor: _Optional[_Union[Tensor, _Mapping]] = ..., sample: _Optional[_Union[SampleSpec, _Mapping]] = ...) -> None: ...

class Claim(_message.Message):
    __slots__ = ("input", "input2", "source", "values")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    INPUT2_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    input: str
    input2: str
    source: str
    values: Tensor
    def __init__(self, input: _Optional[str] = ..., input2: _Optional[str] = ..., source: _Optional[str] = ..., values: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class CheckOptions(_message.Message):
    __slots__ = ("order", "atol", "rtol", "eps", "fast", "seed")
    ORDER_FIELD_NUMBER: _ClassVar[int]
    ATOL_FIELD_NUMBER: _ClassVar[int]
    RTOL_FIELD_NUMBER: _ClassVar[int]
    EPS_FIELD_NUMBER: _ClassVar[int]
    FAST_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    order: int
    atol: float
    rtol: float
    eps: float
    fast: bool
    seed: int
    def __init__(self, order: _Optional[int] = ..., atol: _Optional[float] = ..., rtol: _Optional[float] = ..., eps: _Optional[float] = ..., fast: _Optional[bool] = ..., seed: _Optional[int] = ...) -> None: ...

class CheckRequest(_message.Message):
    __slots__ = ("function", "inputs", "wrt", "batched", "dtype", "kind", "claims", "options")
    class InputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: InputSpec
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[InputSpec, _Mapping]] = ...) -> None: ...
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    WRT_FIELD_NUMBER: _ClassVar[int]
    BATCHED_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    function: str
    inputs: _containers.MessageMap[str, InputSpec]
    wrt: _containers.RepeatedScalarFieldContainer[str]
    batched: bool
    dtype: DType
    kind: CheckKind
    claims: _containers.RepeatedCompositeFieldContainer[Claim]
    options: CheckOptions
    def __init__(self, function: _Optional[str] = ..., inputs: _Optional[_Mapping[str, InputSpec]] = ..., wrt: _Optional[_Iterable[str]] = ..., batched: _Optional[bool] = ..., dtype: _Optional[_Union[DType, str]] = ..., kind: _Optional[_Union[CheckKind, str]] = ..., claims: _Optional[_Iterable[_Union[Claim, _Mapping]]] = ..., options: _Optional[_Union[CheckOptions, _Mapping]] = ...) -> None: ...

class WorstElement(_message.Message):
    __slots__ = ("point", "input", "output_index", "input_index", "analytic", "numeric", "abs_error", "rel_error", "fd_error", "beyond_fd_error", "projection")
    POINT_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_INDEX_FIELD_NUMBER: _ClassVar[int]
    INPUT_INDEX_FIELD_NUMBER: _ClassVar[int]
    ANALYTIC_FIELD_NUMBER: _ClassVar[int]
    NUMERIC_FIELD_NUMBER: _ClassVar[int]
    ABS_ERROR_FIELD_NUMBER: _ClassVar[int]
    REL_ERROR_FIELD_NUMBER: _ClassVar[int]
    FD_ERROR_FIELD_NUMBER: _ClassVar[int]
    BEYOND_FD_ERROR_FIELD_NUMBER: _ClassVar[int]
    PROJECTION_FIELD_NUMBER: _ClassVar[int]
    point: int
    input: str
    output_index: _containers.RepeatedScalarFieldContainer[int]
    input_index: _containers.RepeatedScalarFieldContainer[int]
    analytic: float
    numeric: float
    abs_error: float
    rel_error: float
    fd_error: float
    beyond_fd_error: bool
    projection: int
    def __init__(self, point: _Optional[int] = ..., input: _Optional[str] = ..., output_index: _Optional[_Iterable[int]] = ..., input_index: _Optional[_Iterable[int]] = ..., analytic: _Optional[float] = ..., numeric: _Optional[float] = ..., abs_error: _Optional[float] = ..., rel_error: _Optional[float] = ..., fd_error: _Optional[float] = ..., beyond_fd_error: _Optional[bool] = ..., projection: _Optional[int] = ...) -> None: ...

class Kink(_message.Message):
    __slots__ = ("point", "input", "output_index", "input_index", "at", "right", "left", "autograd", "direction")
    POINT_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_INDEX_FIELD_NUMBER: _ClassVar[int]
    INPUT_INDEX_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    RIGHT_FIELD_NUMBER: _ClassVar[int]
    LEFT_FIELD_NUMBER: _ClassVar[int]
    AUTOGRAD_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    point: int
    input: str
    output_index: _containers.RepeatedScalarFieldContainer[int]
    input_index: _containers.RepeatedScalarFieldContainer[int]
    at: float
    right: float
    left: float
    autograd: float
    direction: int
    def __init__(self, point: _Optional[int] = ..., input: _Optional[str] = ..., output_index: _Optional[_Iterable[int]] = ..., input_index: _Optional[_Iterable[int]] = ..., at: _Optional[float] = ..., right: _Optional[float] = ..., left: _Optional[float] = ..., autograd: _Optional[float] = ..., direction: _Optional[int] = ...) -> None: ...

class CheckReport(_message.Message):
    __slots__ = ("passed", "kind", "order", "mode", "max_abs_error", "max_rel_error", "worst", "non_differentiable", "symmetric", "point_passed", "message", "atol", "rtol", "eps", "num_points", "execution_path", "kink", "max_asymmetry", "three_way", "autograd_matches_finite_differences", "dtype")
    PASSED_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_ERROR_FIELD_NUMBER: _ClassVar[int]
    MAX_REL_ERROR_FIELD_NUMBER: _ClassVar[int]
    WORST_FIELD_NUMBER: _ClassVar[int]
    NON_DIFFERENTIABLE_FIELD_NUMBER: _ClassVar[int]
    SYMMETRIC_FIELD_NUMBER: _ClassVar[int]
    POINT_PASSED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ATOL_FIELD_NUMBER: _ClassVar[int]
    RTOL_FIELD_NUMBER: _ClassVar[int]
    EPS_FIELD_NUMBER: _ClassVar[int]
    NUM_POINTS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PATH_FIELD_NUMBER: _ClassVar[int]
    KINK_FIELD_NUMBER: _ClassVar[int]
    MAX_ASYMMETRY_FIELD_NUMBER: _ClassVar[int]
    THREE_WAY_FIELD_NUMBER: _ClassVar[int]
    AUTOGRAD_MATCHES_FINITE_DIFFERENCES_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    passed: bool
    kind: CheckKind
    order: int
    mode: str
    max_abs_error: float
    max_rel_error: float
    worst: WorstElement
    non_differentiable: bool
    symmetric: bool
    point_passed: _containers.RepeatedScalarFieldContainer[bool]
    message: str
    atol: float
    rtol: float
    eps: float
    num_points: int
    execution_path: ExecutionPath
    kink: Kink
    max_asymmetry: float
    three_way: str
    autograd_matches_finite_differences: bool
    dtype: DType
    def __init__(self, passed: _Optional[bool] = ..., kind: _Optional[_Union[CheckKind, str]] = ..., order: _Optional[int] = ..., mode: _Optional[str] = ..., max_abs_error: _Optional[float] = ..., max_rel_error: _Optional[float] = ..., worst: _Optional[_Union[WorstElement, _Mapping]] = ..., non_differentiable: _Optional[bool] = ..., symmetric: _Optional[bool] = ..., point_passed: _Optional[_Iterable[bool]] = ..., message: _Optional[str] = ..., atol: _Optional[float] = ..., rtol: _Optional[float] = ..., eps: _Optional[float] = ..., num_points: _Optional[int] = ..., execution_path: _Optional[_Union[ExecutionPath, str]] = ..., kink: _Optional[_Union[Kink, _Mapping]] = ..., max_asymmetry: _Optional[float] = ..., three_way: _Optional[str] = ..., autograd_matches_finite_differences: _Optional[bool] = ..., dtype: _Optional[_Union[DType, str]] = ...) -> None: ...

class CheckResponse(_message.Message):
    __slots__ = ("report", "metadata")
    REPORT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    report: CheckReport
    metadata: ComputeMetadata
    def __init__(self, report: _Optional[_Union[CheckReport, _Mapping]] = ..., metadata: _Optional[_Union[ComputeMetadata, _Mapping]] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FunctionInfo(_message.Message):
    __slots__ = ("name", "signature", "example")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    signature: str
    example: str
    def __init__(self, name: _Optional[str] = ..., signature: _Optional[str] = ..., example: _Optional[str] = ...) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("version", "workers", "ray_address", "limits", "functions", "device", "max_message_bytes", "registered_functions")
    class LimitsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    RAY_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    version: str
    workers: int
    ray_address: str
    limits: _containers.ScalarMap[str, int]
    functions: _containers.RepeatedCompositeFieldContainer[FunctionInfo]
    device: str
    max_message_bytes: int
    registered_functions: _containers.RepeatedCompositeFieldContainer[RegisteredFunction]
    def __init__(self, version: _Optional[str] = ..., workers: _Optional[int] = ..., ray_address: _Optional[str] = ..., limits: _Optional[_Mapping[str, int]] = ..., functions: _Optional[_Iterable[_Union[FunctionInfo, _Mapping]]] = ..., device: _Optional[str] = ..., max_message_bytes: _Optional[int] = ..., registered_functions: _Optional[_Iterable[_Union[RegisteredFunction, _Mapping]]] = ...) -> None: ...

class RegisteredFunction(_message.Message):
    __slots__ = ("name", "inputs", "doc")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    DOC_FIELD_NUMBER: _ClassVar[int]
    name: str
    inputs: _containers.RepeatedScalarFieldContainer[str]
    doc: str
    def __init__(self, name: _Optional[str] = ..., inputs: _Optional[_Iterable[str]] = ..., doc: _Optional[str] = ...) -> None: ...

class CheckSpec(_message.Message):
    __slots__ = ("kind", "claims", "options")
    KIND_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    kind: CheckKind
    claims: _containers.RepeatedCompositeFieldContainer[Claim]
    options: CheckOptions
    def __init__(self, kind: _Optional[_Union[CheckKind, str]] = ..., claims: _Optional[_Iterable[_Union[Claim, _Mapping]]] = ..., options: _Optional[_Union[CheckOptions, _Mapping]] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("id", "function", "inputs", "batched", "ops", "check", "wrt", "dtype", "jacobian_mode", "cotangent", "tangents", "vector", "verify")
    class InputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: InputSpec
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[InputSpec, _Mapping]] = ...) -> None: ...
    class TangentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    class VectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    BATCHED_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    CHECK_FIELD_NUMBER: _ClassVar[int]
    WRT_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    JACOBIAN_MODE_FIELD_NUMBER: _ClassVar[int]
    COTANGENT_FIELD_NUMBER: _ClassVar[int]
    TANGENTS_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    VERIFY_FIELD_NUMBER: _ClassVar[int]
    id: str
    function: str
    inputs: _containers.MessageMap[str, InputSpec]
    batched: bool
    ops: _containers.RepeatedScalarFieldContainer[Op]
    check: CheckSpec
    wrt: _containers.RepeatedScalarFieldContainer[str]
    dtype: DType
    jacobian_mode: JacobianMode
    cotangent: Tensor
    tangents: _containers.MessageMap[str, Tensor]
    vector: _containers.MessageMap[str, Tensor]
    verify: Verify
    def __init__(self, id: _Optional[str] = ..., function: _Optional[str] = ..., inputs: _Optional[_Mapping[str, InputSpec]] = ..., batched: _Optional[bool] = ..., ops: _Optional[_Iterable[_Union[Op, str]]] = ..., check: _Optional[_Union[CheckSpec, _Mapping]] = ..., wrt: _Optional[_Iterable[str]] = ..., dtype: _Optional[_Union[DType, str]] = ..., jacobian_mode: _Optional[_Union[JacobianMode, str]] = ..., cotangent: _Optional[_Union[Tensor, _Mapping]] = ..., tangents: _Optional[_Mapping[str, Tensor]] = ..., vector: _Optional[_Mapping[str, Tensor]] = ..., verify: _Optional[_Union[Verify, str]] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("name", "tasks", "idempotency_key")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    name: str
    tasks: _containers.RepeatedCompositeFieldContainer[Task]
    idempotency_key: str
    def __init__(self, name: _Optional[str] = ..., tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class TaskError(_message.Message):
    __slots__ = ("task_index", "task_id", "code", "message")
    TASK_INDEX_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    task_index: int
    task_id: str
    code: str
    message: str
    def __init__(self, task_index: _Optional[int] = ..., task_id: _Optional[str] = ..., code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "name", "state", "tasks_total", "tasks_done", "tasks_failed", "points_total", "points_done", "created_at", "started_at", "finished_at", "errors", "idempotency_key")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TASKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TASKS_DONE_FIELD_NUMBER: _ClassVar[int]
    TASKS_FAILED_FIELD_NUMBER: _ClassVar[int]
    POINTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    POINTS_DONE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    state: JobState
    tasks_total: int
    tasks_done: int
    tasks_failed: int
    points_total: int
    points_done: int
    created_at: float
    started_at: float
    finished_at: float
    errors: _containers.RepeatedCompositeFieldContainer[TaskError]
    idempotency_key: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., tasks_total: _Optional[int] = ..., tasks_done: _Optional[int] = ..., tasks_failed: _Optional[int] = ..., points_total: _Optional[int] = ..., points_done: _Optional[int] = ..., created_at: _Optional[float] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., errors: _Optional[_Iterable[_Union[TaskError, _Mapping]]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "states")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    states: _containers.RepeatedScalarFieldContainer[JobState]
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., states: _Optional[_Iterable[_Union[JobState, str]]] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job", "message")
    JOB_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    job: Job
    message: str
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class GetJobResultsRequest(_message.Message):
    __slots__ = ("job_id", "start_task")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    START_TASK_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    start_task: int
    def __init__(self, job_id: _Optional[str] = ..., start_task: _Optional[int] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("task_index", "task_id", "results", "check", "error", "metadata")
    TASK_INDEX_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    CHECK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    task_index: int
    task_id: str
    results: _containers.RepeatedCompositeFieldContainer[OpResult]
    check: CheckReport
    error: TaskError
    metadata: ComputeMetadata
    def __init__(self, task_index: _Optional[int] = ..., task_id: _Optional[str] = ..., results: _Optional[_Iterable[_Union[OpResult, _Mapping]]] = ..., check: _Optional[_Union[CheckReport, _Mapping]] = ..., error: _Optional[_Union[TaskError, _Mapping]] = ..., metadata: _Optional[_Union[ComputeMetadata, _Mapping]] = ...) -> None: ...

class TaskResultPart(_message.Message):
    __slots__ = ("header", "piece")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PIECE_FIELD_NUMBER: _ClassVar[int]
    header: TaskResult
    piece: TensorPiece
    def __init__(self, header: _Optional[_Union[TaskResult, _Mapping]] = ..., piece: _Optional[_Union[TensorPiece, _Mapping]] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class DeleteJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class DeleteJobResponse(_message.Message):
    __slots__ = ("job", "freed_bytes")
    JOB_FIELD_NUMBER: _ClassVar[int]
    FREED_BYTES_FIELD_NUMBER: _ClassVar[int]
    job: Job
    freed_bytes: int
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., freed_bytes: _Optional[int] = ...) -> None: ...

class SharedMemoryRef(_message.Message):
    __slots__ = ("region", "offset", "byte_size")
    REGION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    BYTE_SIZE_FIELD_NUMBER: _ClassVar[int]
    region: str
    offset: int
    byte_size: int
    def __init__(self, region: _Optional[str] = ..., offset: _Optional[int] = ..., byte_size: _Optional[int] = ...) -> None: ...

class RegisterSharedMemoryRequest(_message.Message):
    __slots__ = ("name", "key", "offset", "byte_size", "proof")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    BYTE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    name: str
    key: str
    offset: int
    byte_size: int
    proof: bytes
    def __init__(self, name: _Optional[str] = ..., key: _Optional[str] = ..., offset: _Optional[int] = ..., byte_size: _Optional[int] = ..., proof: _Optional[bytes] = ...) -> None: ...

class SharedMemoryRegion(_message.Message):
    __slots__ = ("name", "key", "offset", "byte_size", "calls_using")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    BYTE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CALLS_USING_FIELD_NUMBER: _ClassVar[int]
    name: str
    key: str
    offset: int
    byte_size: int
    calls_using: int
    def __init__(self, name: _Optional[str] = ..., key: _Optional[str] = ..., offset: _Optional[int] = ..., byte_size: _Optional[int] = ..., calls_using: _Optional[int] = ...) -> None: ...

class UnregisterSharedMemoryRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class UnregisterSharedMemoryResponse(_message.Message):
    __slots__ = ("regions",)
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    regions: _containers.RepeatedCompositeFieldContainer[SharedMemoryRegion]
    def __init__(self, regions: _Optional[_Iterable[_Union[SharedMemoryRegion, _Mapping]]] = ...) -> None: ...

class ListSharedMemoryRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListSharedMemoryResponse(_message.Message):
    __slots__ = ("regions",)
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    regions: _containers.RepeatedCompositeFieldContainer[SharedMemoryRegion]
    def __init__(self, regions: _Optional[_Iterable[_Union[SharedMemoryRegion, _Mapping]]] = ...) -> None: ...
