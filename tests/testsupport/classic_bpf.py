"""A complete classic-BPF interpreter with the Linux socket-filter semantics, for tests.

appliance.capture.bpf.run_program interprets only the instructions our compiler emits; the
differential test also runs libpcap's programs (`tcpdump -ddd`), which use the rest of the
instruction set (scratch memory, the X register, arithmetic, JGT/JGE, RET A). This module
implements all of it, written from linux/filter.h and Documentation/networking/filter.rst,
not from either compiler:

- loads past the end of the frame, and division or modulo by X = 0, end the program with 0;
- arithmetic is on unsigned 32-bit words, comparisons are unsigned;
- LD/LDX LEN is the frame's length (what the kernel calls skb->len);
- ancillary loads (k >= SKF_AD_OFF, i.e. negative as a signed offset) support the two the
  capture uses: VLAN_TAG (the TCI the kernel stripped, 0 when none) and VLAN_TAG_PRESENT;
  any other one raises, so a test never silently relies on an unmodelled extension;
- the scratch memory M[0..15] starts zeroed (the kernel's checker rejects reads before writes).
"""

from __future__ import annotations

from collections.abc import Sequence

MASK32 = 0xFFFFFFFF
SKF_AD_OFF = 0xFFFFF000  # -0x1000 as an unsigned word
SKF_AD_VLAN_TAG = 44
SKF_AD_VLAN_TAG_PRESENT = 48
_WIDTH = {0x00: 4, 0x08: 2, 0x10: 1}  # BPF_W, BPF_H, BPF_B


def run(prog: Sequence[tuple[int, int, int, int]], frame: bytes, vlan_tci: int | None) -> int:
    """Run prog on frame; returns what it returns (0 = drop). vlan_tci: the out-of-band tag."""
    a = x = 0
    mem = [0] * 16
    pc = 0
    while True:
        if not 0 <= pc < len(prog):
            raise ValueError(f"pc {pc} left the program without a RET")
        code, jt, jf, k = prog[pc]
        pc += 1
        cls = code & 0x07
        if cls in (0x00, 0x01):  # LD, LDX
            mode = code & 0xE0
            if mode == 0x00:  # IMM
                val = k
            elif mode == 0x80:  # LEN
                val = len(frame)
            elif mode == 0x60:  # MEM
                val = mem[k]
            elif cls == 0x01 and mode == 0xA0:  # MSH: 4 * (P[k] & 0xf)
                if k >= len(frame):
                    return 0
                val = (frame[k] & 0x0F) * 4
            elif cls == 0x00 and mode in (0x20, 0x40):  # ABS, IND
                off = k if mode == 0x20 else (x + k) & MASK32
                width = _WIDTH[code & 0x18]
                if off >= SKF_AD_OFF:
                    n = off - SKF_AD_OFF
                    if n == SKF_AD_VLAN_TAG_PRESENT:
                        val = int(vlan_tci is not None)
                    elif n == SKF_AD_VLAN_TAG:
                        val = vlan_tci or 0
                    else:
                        raise ValueError(f"ancillary load {n} is not modelled")
                elif off + width > len(frame):
                    return 0
                else:
                    val = int.from_bytes(frame[off : off + width], "big")
            else:
                raise ValueError(f"bad load {code:#06x}")
            if cls == 0x00:
                a = val
            else:
                x = val
        elif cls == 0x02:  # ST
            mem[k] = a
        elif cls == 0x03:  # STX
            mem[k] = x
        elif cls == 0x04:  # ALU
            op = code & 0xF0
            src = x if code & 0x08 else k
            if op == 0x00:
                a = a + src
            elif op == 0x10:
                a = a - src
            elif op == 0x20:
                a = a * src
            elif op in (0x30, 0x90):  # DIV, MOD
                if src == 0:
                    return 0
                a = a // src if op == 0x30 else a % src
            elif op == 0x40:
                a = a | src
            elif op == 0x50:
                a = a & src
            elif op == 0x60:
                a = a << src if src < 32 else 0
            elif op == 0x70:
                a = a >> src if src < 32 else 0
            elif op == 0x80:
                a = -a
            elif op == 0xA0:
                a = a ^ src
            else:
                raise ValueError(f"bad ALU op {code:#06x}")
            a &= MASK32
        elif cls == 0x05:  # JMP
            op = code & 0xF0
            src = x if code & 0x08 else k
            if op == 0x00:  # JA
                pc += k
            elif op == 0x10:
                pc += jt if a == src else jf
            elif op == 0x20:
                pc += jt if a > src else jf
            elif op == 0x30:
                pc += jt if a >= src else jf
            elif op == 0x40:
                pc += jt if a & src else jf
            else:
                raise ValueError(f"bad jump {code:#06x}")
        elif cls == 0x06:  # RET
            return a if code & 0x18 == 0x10 else k
        else:  # MISC
            if code & 0xF8 == 0x00:  # TAX
                x = a
            else:  # TXA
                a = x
