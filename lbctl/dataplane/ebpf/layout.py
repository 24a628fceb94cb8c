"""The program's sizes, keys and struct layouts, read from bpf/lbctl_shared.h: the one source
the C program (#include) and this package share, so the two cannot drift apart.

Read once at import.  The header is part of lbctl like its Python modules are: a tree without
it is a broken install, and importing the ebpf package then fails with the path it looked at.
Only the two forms the header promises are understood (`#define NAME NUMBER` and structs of
u32/u64 fields, arrays included); anything else in it is ignored here, so a header change
that Python must follow shows up as a missing name (KeyError at import), and
tests/dataplane/test_ebpf_layout.py compares the result with the maps the kernel built.
"""

from __future__ import annotations

import pathlib
import re
import struct
from dataclasses import dataclass

from lbctl.dataplane import bpf_loader

__all__ = ["DEFINES", "STRUCTS", "Struct", "parse"]

_DEFINE = re.compile(r"^\s*#define\s+([A-Z_][A-Z0-9_]*)\s+(0x[0-9a-fA-F]+|[0-9]+)[uUlL]*\b", re.M)
_STRUCT = re.compile(r"^\s*struct\s+(\w+)\s*\{(.*?)\};", re.M | re.S)
_FIELD = re.compile(r"^\s*(u32|u64)\s+(\w+)(?:\[(\d+)\])?\s*;", re.M)
_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_SIZES = {"u32": 4, "u64": 8}
_CODES = {"u32": "I", "u64": "Q"}


@dataclass(frozen=True)
class Struct:
    """A struct of the header as the kernel lays it out: natural alignment, as clang does."""

    name: str
    fields: tuple[tuple[str, str, int], ...]  # (type, name, count)

    @property
    def format(self) -> str:
        """struct-module format of the whole struct, padding included ("=" + codes)."""
        out, offset, align = "=", 0, 1
        for kind, _, count in self.fields:
            size = _SIZES[kind]
            align = max(align, size)
            pad = -offset % size
            out += "x" * pad + (f"{count}{_CODES[kind]}" if count > 1 else _CODES[kind])
            offset += pad + size * count
        return out + "x" * (-offset % align)

    @property
    def size(self) -> int:
        return struct.calcsize(self.format)


def parse(text: str) -> tuple[dict[str, int], dict[str, Struct]]:
    """(macro -> value, struct name -> Struct) of a header in the promised forms."""
    text = _COMMENT.sub("", text)
    defines = {name: int(value, 0) for name, value in _DEFINE.findall(text)}
    structs = {
        name: Struct(name, tuple((kind, field, int(count or 1))
                                 for kind, field, count in _FIELD.findall(body)))
        for name, body in _STRUCT.findall(text)
    }  # fmt: skip
    return defines, structs


def _load(path: pathlib.Path) -> tuple[dict[str, int], dict[str, Struct]]:
    try:
        return parse(path.read_text())
    except OSError as e:
        raise ImportError(f"lbctl's eBPF header is missing or unreadable: {path}: {e}") from e


DEFINES, STRUCTS = _load(bpf_loader.header_path())
