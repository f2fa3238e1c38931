"""A lookup *from a BPF program*, for replaying map operations on a real map.

What sets an LRU element's reference bit is a lookup by a BPF program (a user-space
lookup does not), so the LRU replay needs one: a hand-assembled XDP program, loaded and
run on the calling CPU with BPF_PROG_TEST_RUN through syscall.py's :class:`BpfProgram`.
The replay's other need, an update answered with the kernel's errno, is
:meth:`BpfMap.update_errno`.
"""

from __future__ import annotations

import struct

from egressgw.datapath.bpf.syscall import BpfMap, BpfProgram

# enum bpf_prog_type (the rest of the vocabulary is syscall.py's)
PROG_TYPE_XDP = 6

XDP_DROP = 1
XDP_PASS = 2


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One ``struct bpf_insn``."""
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


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
