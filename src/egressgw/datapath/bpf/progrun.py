"""Replaying map operations on a real map: errno-level updates, and BPF-side lookups.

Built on ``syscall.py``'s bpf(2) layer. Two things a replay needs that a datapath does
not: an update that returns the kernel's answer (``-EEXIST`` for a ``BPF_NOEXIST`` insert
of an existing key, ``-ENOMEM``) instead of raising, and a lookup *from a BPF program*,
which is what sets an LRU element's reference bit (a user-space lookup does not). The
latter loads a hand-assembled XDP program with BPF_PROG_LOAD and runs it on the calling
CPU with BPF_PROG_TEST_RUN.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Sequence

from egressgw.datapath.bpf.syscall import (
    BPF_ANY,
    MAP_UPDATE_ELEM,
    PROG_TEST_RUN,
    BpfMap,
    _addr,
    _bpf,
    _MapElem,
    _TestRun,
)
from egressgw.errors import DatapathError

# enum bpf_cmd, enum bpf_prog_type (the rest of the vocabulary is syscall.py's)
PROG_LOAD = 5
PROG_TYPE_XDP = 6

XDP_DROP = 1
XDP_PASS = 2


def update_errno(bpf_map: BpfMap, key: bytes, value: bytes, flags: int = BPF_ANY) -> int:
    """map_update_elem from user space: 0, or the negative errno the kernel answered.

    The same kernel function as a BPF program's update (``htab_lru_map_update_elem``),
    run on the calling CPU.
    """
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    try:
        _bpf(MAP_UPDATE_ELEM, _MapElem(bpf_map.fd, 0, _addr(k), _addr(v), flags))
    except OSError as exc:
        return -(exc.errno or errno.EIO)
    return 0


class _ProgLoad(ctypes.Structure):
    _fields_ = (
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
    )


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One ``struct bpf_insn``."""
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


class BpfProgram:
    """A loaded program (a file descriptor), closed with :meth:`close`."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def load(cls, prog_type: int, insns: Sequence[bytes], name: str = "") -> BpfProgram:
        code = ctypes.create_string_buffer(b"".join(insns))
        license = ctypes.create_string_buffer(b"GPL")
        log = ctypes.create_string_buffer(65536)
        attr = _ProgLoad(prog_type, len(insns), _addr(code), _addr(license), 1, len(log),
                         _addr(log), 0, 0, name.encode()[:15], 0, 0)
        try:
            fd = _bpf(PROG_LOAD, attr)
        except OSError as exc:
            lines = log.value.decode(errors="replace").strip().splitlines()[-3:]
            raise DatapathError(f"bpf prog load {name}: {exc.strerror}: "
                                + " | ".join(lines)) from None
        return cls(fd)

    def test_run(self, data: bytes) -> int:
        """BPF_PROG_TEST_RUN once on ``data``, on the calling CPU: the program's return."""
        buf = ctypes.create_string_buffer(data, len(data))
        attr = _TestRun(self.fd, 0, len(data), 0, _addr(buf), 0, 1)
        try:
            _bpf(PROG_TEST_RUN, attr)
        except OSError as exc:
            raise DatapathError(f"bpf prog test run: {exc.strerror}") from None
        return int(attr.retval)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> BpfProgram:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def xdp_lookup_program(bpf_map: BpfMap) -> BpfProgram:
    """An XDP program that looks up the 8-byte map key held in the packet's first bytes.

    Returns XDP_PASS when the key was found, XDP_DROP when not. Run it on a packet of at
    least 14 bytes (an Ethernet header's worth: the test-run minimum).
    """
    if bpf_map.info.key_size != 8:
        raise ValueError("xdp_lookup_program handles 8-byte keys")
    mov64_reg, mov64_imm, add64_imm = 0xBF, 0xB7, 0x07
    ldx_w, ldx_dw, stx_dw = 0x61, 0x79, 0x7B
    jgt_reg, jeq_imm, ld_imm64, call, exit_ = 0x2D, 0x15, 0x18, 0x85, 0x95
    pseudo_map_fd, map_lookup_elem = 1, 1
    program = [
        insn(mov64_reg, 6, 1),  # r6 = ctx
        insn(ldx_w, 2, 6, 0),  # r2 = ctx->data
        insn(ldx_w, 3, 6, 4),  # r3 = ctx->data_end
        insn(mov64_reg, 4, 2),
        insn(add64_imm, 4, imm=8),
        insn(jgt_reg, 4, 3, off=10),  # data + 8 > data_end: XDP_DROP
        insn(ldx_dw, 5, 2, 0),  # r5 = the key
        insn(stx_dw, 10, 5, -8),  # onto the stack
        insn(ld_imm64, 1, pseudo_map_fd, imm=bpf_map.fd),
        insn(0),
        insn(mov64_reg, 2, 10),
        insn(add64_imm, 2, imm=-8),
        insn(call, imm=map_lookup_elem),
        insn(jeq_imm, 0, off=2, imm=0),  # not found: XDP_DROP
        insn(mov64_imm, 0, imm=XDP_PASS),
        insn(exit_),
        insn(mov64_imm, 0, imm=XDP_DROP),
        insn(exit_),
    ]
    return BpfProgram.load(PROG_TYPE_XDP, program, "lru_lookup")
