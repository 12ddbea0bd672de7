"""The Open Inference Protocol (KServe V2) beside ``/v1/classify``: its schemas and the
translation between V2 tensors and the cascade's request and answer.

The model takes one input, ``text`` (BYTES, shape [-1]: one element per text), and returns
one element per text in each output: ``label``, ``tier``, ``reason``, ``cause`` (BYTES),
``score``, ``confidence``, ``cost`` (FP32; ``confidence`` is NaN, JSON null, when the
student did not score the item) and ``escalated``, ``consulted``, ``degraded`` (BOOL), each
meaning what it means in ``/v1/classify`` (``router.decision``). Request
``parameters`` ``mode`` and ``threshold`` mean what they mean in ``/v1/classify``'s options.

Tensor data travels as JSON (``data``) or with the binary tensor data extension: a JSON
header of ``Inference-Header-Content-Length`` bytes followed by the raw tensors, a tensor's
``parameters.binary_data_size`` giving its length; a BYTES element is a 4-byte little-endian
length and its UTF-8 bytes. Outputs come back binary when the request asks for it
(``parameters.binary_data_output``, or ``binary_data`` on a requested output), else as JSON.
"""

import math
import struct
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.api import ClassifyOptions, ClassifyResponse, Prediction
from serving.errors import ServingError
from serving.guards import InvalidJson, parse_json

HEADER_LENGTH = "Inference-Header-Content-Length"
INPUT_NAME = "text"
Parameters = dict[str, bool | int | float | str]
Datatype = Literal["BYTES", "FP32", "BOOL"]

# output name -> (datatype, how to read it from a prediction)
OUTPUTS: dict[str, tuple[Datatype, Any]] = {
    "label": ("BYTES", lambda p: p.label),
    "score": ("FP32", lambda p: p.score),
    "tier": ("BYTES", lambda p: p.tier),
    "reason": ("BYTES", lambda p: p.reason),
    "cause": ("BYTES", lambda p: p.cause or ""),
    "escalated": ("BOOL", lambda p: p.escalated),
    "consulted": ("BOOL", lambda p: p.consulted),
    "degraded": ("BOOL", lambda p: p.degraded),
    "confidence": ("FP32", lambda p: math.nan if p.confidence is None else p.confidence),
    "cost": ("FP32", lambda p: p.cost),
}


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    """``GET /v2/models/{name}``."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    """``GET /v2``."""

    name: str
    version: str
    extensions: list[str]


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[int] = Field(description="dimensions; their product is the number of texts")
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = Field(None, description="the elements, flat or nested by shape (absent with binary data)")


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    parameters: Parameters | None = None


class InferRequest(BaseModel):
    """``POST /v2/models/{name}/infer``."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str | None
    id: str
    parameters: Parameters
    outputs: list[ResponseOutput]


class V2Error(ServingError):
    """A request the protocol layer refuses: an HTTP status and a message naming the problem."""

    def __init__(self, status: int, message: str):
        super().__init__(message, status)

    def response(self) -> JSONResponse:
        return JSONResponse(status_code=self.status, content={"error": str(self)})


def check_model(served: str, name: str) -> None:
    """404 unless ``name`` is the served model."""
    if name != served:
        raise V2Error(404, f"unknown model '{name}': this server serves '{served}'")


def server_metadata() -> ServerMetadata:
    return ServerMetadata(name="distill-cascade", version="1", extensions=["binary_tensor_data"])


def model_metadata(name: str, student_version: str | None) -> ModelMetadata:
    """The cascade as one V2 model; its version is the student's (the teacher's is in each response)."""
    return ModelMetadata(
        name=name,
        versions=[student_version] if student_version else [],
        platform="distill-cascade",
        inputs=[TensorMetadata(name=INPUT_NAME, datatype="BYTES", shape=[-1])],
        outputs=[TensorMetadata(name=out, datatype=dtype, shape=[-1]) for out, (dtype, _) in OUTPUTS.items()],
    )


@dataclass(frozen=True)
class InferCall:
    """A parsed V2 inference request: the texts, the cascade options, and the outputs wanted
    (name -> binary or not)."""

    request: InferRequest
    texts: list[str]
    options: ClassifyOptions
    outputs: dict[str, bool]


def _problems(err: ValidationError, prefix: str = "") -> str:
    return "; ".join(f"{prefix}{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors())


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary tensor data after it (none without the header field)."""
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        raise V2Error(400, f"{HEADER_LENGTH}: expected a byte count, got {header_length!r}") from None
    if not 0 < length <= len(body):
        raise V2Error(400, f"{HEADER_LENGTH}: {length} is not within the body's {len(body)} bytes")
    return body[:length], body[length:]


def decode_bytes_tensor(raw: bytes, where: str) -> list[str]:
    """BYTES elements from the binary extension: each a 4-byte little-endian length and its bytes."""
    texts, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise V2Error(400, f"{where}: binary BYTES data ends inside an element's length")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise V2Error(400, f"{where}: binary BYTES element of {size} bytes runs past the tensor's data")
        try:
            texts.append(raw[offset : offset + size].decode("utf-8"))
        except UnicodeDecodeError:
            raise V2Error(400, f"{where}[{len(texts)}]: not valid UTF-8") from None
        offset += size
    return texts


def _flatten(data: list[Any]) -> list[Any]:
    """The elements of nested lists, in order, without recursion (however deep the client nested them)."""
    flat: list[Any] = []
    pending = [iter(data)]
    while pending:
        for item in pending[-1]:
            if isinstance(item, list):
                pending.append(iter(item))
                break
            flat.append(item)
        else:
            pending.pop()
    return flat


def _texts(tensor: RequestInput, binary: bytes) -> list[str]:
    """The texts of the ``text`` input, from JSON ``data`` or its binary data."""
    where = "inputs[0]"
    if tensor.name != INPUT_NAME or tensor.datatype != "BYTES":
        raise V2Error(400, f"{where}: expected the input '{INPUT_NAME}' of datatype BYTES, got '{tensor.name}' of {tensor.datatype}")
    if any(d < 0 for d in tensor.shape):
        raise V2Error(400, f"{where}.shape: dimensions must be >= 0, got {tensor.shape}")
    count = math.prod(tensor.shape)
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
            raise V2Error(400, f"{where}.parameters.binary_data_size: {size!r}, but {len(binary)} bytes of binary data follow the header")
        texts = decode_bytes_tensor(binary, f"{where}.data")
    else:
        if binary:
            raise V2Error(400, f"{where}: {len(binary)} bytes of binary data but no parameters.binary_data_size")
        if tensor.data is None:
            raise V2Error(400, f"{where}.data: missing (give the texts as data, or as binary data with binary_data_size)")
        texts = _flatten(tensor.data)
        if not all(isinstance(t, str) for t in texts):
            raise V2Error(400, f"{where}.data: BYTES elements must be strings")
    if len(texts) != count:
        raise V2Error(400, f"{where}: shape {tensor.shape} holds {count} element(s), the data has {len(texts)}")
    return texts


def _options(parameters: Parameters | None) -> ClassifyOptions:
    """``mode`` and ``threshold`` from the request's parameters; others (such as
    ``binary_data_output``) are protocol settings, not cascade options."""
    chosen = {k: v for k, v in (parameters or {}).items() if k in ("mode", "threshold")}
    try:
        return ClassifyOptions.model_validate(chosen)
    except ValidationError as err:
        raise V2Error(422, _problems(err, "parameters.")) from None


def _wanted_outputs(request: InferRequest) -> dict[str, bool]:
    binary_default = bool((request.parameters or {}).get("binary_data_output", False))
    if request.outputs is None:
        return {name: binary_default for name in OUTPUTS}
    wanted = {}
    for i, out in enumerate(request.outputs):
        if out.name not in OUTPUTS:
            raise V2Error(400, f"outputs[{i}].name: unknown output '{out.name}'; the outputs are {', '.join(OUTPUTS)}")
        wanted[out.name] = bool((out.parameters or {}).get("binary_data", binary_default))
    return wanted


def parse_infer(body: bytes, header_length: str | None) -> InferCall:
    """A V2 inference request body (JSON, or JSON plus binary tensor data) as an ``InferCall``."""
    header, binary = _split_body(body, header_length)
    if header_length is not None:  # the ingress's guard left the body's UTF-8 to us: binary data follows the JSON
        try:
            header.decode("utf-8")
        except UnicodeDecodeError as err:
            raise V2Error(400, f"body: the JSON header is not valid UTF-8 at byte offset {err.start}") from None
    try:
        request = parse_json(InferRequest, header)  # strict, and safe against deep nesting
    except InvalidJson as err:
        raise V2Error(400, str(err)) from None
    except ValidationError as err:
        raise V2Error(422, _problems(err)) from None
    if len(request.inputs) != 1:
        raise V2Error(400, f"inputs: expected one tensor, '{INPUT_NAME}' (BYTES), got {len(request.inputs)}")
    return InferCall(request, _texts(request.inputs[0], binary), _options(request.parameters), _wanted_outputs(request))


def _encode(datatype: Datatype, values: list[Any]) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(b)) + b for b in (str(v).encode("utf-8") for v in values))
    return np.asarray(values, dtype=np.float32 if datatype == "FP32" else np.bool_).tobytes()


def infer_response(model_name: str, call: InferCall, answer: ClassifyResponse) -> Response:
    """The cascade's answer as V2 output tensors, JSON or binary as the request asked."""
    predictions: list[Prediction] = answer.predictions
    outputs, blobs = [], []
    for name, binary in call.outputs.items():
        datatype, read = OUTPUTS[name]
        values = [read(p) for p in predictions]
        if binary:
            blob = _encode(datatype, values)
            blobs.append(blob)
            outputs.append(ResponseOutput(name=name, shape=[len(values)], datatype=datatype, parameters={"binary_data_size": len(blob)}))
        else:
            outputs.append(ResponseOutput(name=name, shape=[len(values)], datatype=datatype, data=values))
    body = InferResponse(
        model_name=model_name,
        model_version=answer.versions.student,
        id=call.request.id or answer.request_id,
        parameters={"request_id": answer.request_id, "student_version": answer.versions.student or "",
                    "teacher_version": answer.versions.teacher or "", "logged": answer.logged, "cost": answer.cost},
        outputs=outputs,
    ).model_dump_json(exclude_none=True).encode()
    if not blobs:
        return Response(body, media_type="application/json")
    return Response(body + b"".join(blobs), media_type="application/octet-stream", headers={HEADER_LENGTH: str(len(body))})
