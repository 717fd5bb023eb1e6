"""Safetensors shards read and written one tensor at a time, with numpy only.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping
each tensor name to {dtype, shape, data_offsets} (offsets relative to the end of the
header), then the raw little-endian bytes. Sharded checkpoints add
`model.safetensors.index.json` whose "weight_map" names the shard of every tensor.

Why not `safetensors.safe_open`: its numpy backend cannot load float8 tensors (numpy
has no float8 type; safetensors 0.8 looks for `np.float8_e4m3fn` and fails), and the
torch backend would make torch a dependency of importing. Reading the header ourselves
and `readinto` an array of the ml_dtypes type costs a few lines, handles every dtype a
DeepSeek checkpoint uses, and keeps host memory at exactly one tensor per read.
Writing streams too: the shard header is computed from shapes alone, then each tensor
is produced, written and dropped.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import Callable, Iterable

import ml_dtypes
import numpy as np

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32), "I16": np.dtype(np.int16), "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


class CheckpointFormatError(ValueError):
    """A file is not a readable safetensors checkpoint."""


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its file, safetensors dtype name, shape and byte range."""

    file: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(path: str) -> dict[str, TensorInfo]:
    """Parse one shard's header (no tensor data is read)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise CheckpointFormatError(f"{path}: too short to be a safetensors file")
        (header_len,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(f.read(header_len))
        except ValueError as e:
            raise CheckpointFormatError(f"{path}: unreadable safetensors header ({e})") from None
    base = 8 + header_len
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        out[name] = TensorInfo(path, entry["dtype"], tuple(entry["shape"]), base + begin, base + end)
    return out


def scan_checkpoint(directory: str) -> dict[str, TensorInfo]:
    """name -> TensorInfo for every tensor of a checkpoint directory.

    Uses `model.safetensors.index.json` when present (and checks that each shard really
    holds the tensors the index assigns to it), else every `*.safetensors` file.
    """
    index_path = os.path.join(directory, INDEX_FILE)
    if os.path.exists(index_path):
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
        files = sorted(set(weight_map.values()))
    else:
        files = sorted(n for n in os.listdir(directory) if n.endswith(".safetensors"))
        weight_map = None
    if not files:
        raise CheckpointFormatError(f"{directory}: no *.safetensors files and no {INDEX_FILE}")
    tensors: dict[str, TensorInfo] = {}
    for name in files:
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            listed = sorted(k for k, v in weight_map.items() if v == name)
            raise CheckpointFormatError(f"{directory}: shard {name} listed in {INDEX_FILE} is missing "
                                        f"(it should hold {len(listed)} tensors, e.g. {listed[:3]})")
        tensors.update(read_header(path))
    if weight_map is not None:
        absent = sorted(k for k, v in weight_map.items()
                        if k not in tensors or os.path.basename(tensors[k].file) != v)
        if absent:
            raise CheckpointFormatError(f"{directory}: tensors listed in {INDEX_FILE} but not in their "
                                        f"shard: {absent[:20]}{' ...' if len(absent) > 20 else ''}")
    return tensors


class ShardReader:
    """Reads tensors by TensorInfo, keeping one open handle per shard."""

    def __init__(self):
        self._files = {}

    def read(self, info: TensorInfo) -> np.ndarray:
        dtype = DTYPES.get(info.dtype)
        if dtype is None:
            raise CheckpointFormatError(f"{info.file}: unsupported safetensors dtype {info.dtype}")
        out = np.empty(info.shape, dtype)
        if out.nbytes != info.nbytes:
            raise CheckpointFormatError(f"{info.file}: byte range of a {info.dtype}{list(info.shape)} "
                                        f"tensor is {info.nbytes} bytes, expected {out.nbytes}")
        f = self._files.get(info.file)
        if f is None:
            f = self._files[info.file] = open(info.file, "rb")
        f.seek(info.start)
        if out.nbytes and f.readinto(out.reshape(-1).view(np.uint8)) != out.nbytes:
            raise CheckpointFormatError(f"{info.file}: truncated tensor data")
        return out

    def close(self):
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass(frozen=True)
class PlannedTensor:
    """A tensor to write: name, dtype, shape, and a function producing its values."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    produce: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def plan_shards(tensors: Iterable[PlannedTensor], max_shard_bytes: int) -> list[list[PlannedTensor]]:
    """Split into consecutive shards of at most max_shard_bytes (a bigger tensor gets its own)."""
    shards, current, size = [], [], 0
    for t in tensors:
        if current and size + t.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(t)
        size += t.nbytes
    if current:
        shards.append(current)
    return shards


def write_shard(path: str, tensors: list[PlannedTensor], on_tensor: Callable[[], None] = lambda: None):
    """Write one safetensors file, producing and releasing one tensor at a time."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for t in tensors:
        header[t.name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                          "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for t in tensors:
            value = np.ascontiguousarray(t.produce(), dtype=t.dtype)
            if value.shape != tuple(t.shape):
                raise ValueError(f"{t.name}: produced shape {value.shape}, planned {t.shape}")
            f.write(value.reshape(-1).view(np.uint8).data)
            on_tensor()


def shard_file_name(i: int, count: int) -> str:
    if count == 1:
        return SINGLE_FILE
    return f"model-{i + 1:05d}-of-{count:05d}.safetensors"


def write_checkpoint_tensors(directory: str, tensors: list[PlannedTensor], max_shard_bytes: int,
                             on_tensor: Callable[[], None] = lambda: None) -> dict:
    """Write all shards (plus the index when there are several); returns the weight map."""
    shards = plan_shards(tensors, max_shard_bytes)
    weight_map = {}
    for i, shard in enumerate(shards):
        file_name = shard_file_name(i, len(shards))
        write_shard(os.path.join(directory, file_name), shard, on_tensor)
        weight_map.update({t.name: file_name for t in shard})
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)}, "weight_map": weight_map}
        with open(os.path.join(directory, INDEX_FILE), "w") as f:
            json.dump(index, f, indent=2, sort_keys=True)
    return weight_map


def parse_size(text) -> int:
    """'5GB', '200MB', '20KB' or an int -> bytes (decimal units, as transformers uses)."""
    if isinstance(text, int):
        return text
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
    s = str(text).strip().upper()
    for unit in sorted(units, key=len, reverse=True):
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * units[unit])
    return int(s)
