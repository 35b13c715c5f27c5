"""_msgpack.py -- the msgpack subset the DHT's keys and values use (nil, bool, int, float, str, bytes, arrays,
maps), so that the package needs no pip package. hivemind serializes DHT keys, subkeys and values with
msgpack; dmoe nodes hash and store the same bytes.
"""
import struct

__all__ = ["packb", "unpackb"]


def packb(o):
    out = bytearray()
    _pack(o, out)
    return bytes(out)


def _pack(o, out):
    if o is None:
        out.append(0xC0)
    elif o is True:
        out.append(0xC3)
    elif o is False:
        out.append(0xC2)
    elif isinstance(o, int):
        if 0 <= o < 0x80:
            out.append(o)
        elif -32 <= o < 0:
            out.append(o & 0xFF)
        elif 0 <= o <= 0xFF:
            out += b"\xcc" + struct.pack(">B", o)
        elif 0 <= o <= 0xFFFF:
            out += b"\xcd" + struct.pack(">H", o)
        elif 0 <= o <= 0xFFFFFFFF:
            out += b"\xce" + struct.pack(">I", o)
        elif 0 <= o < 1 << 64:
            out += b"\xcf" + struct.pack(">Q", o)
        elif -0x80 <= o < 0:
            out += b"\xd0" + struct.pack(">b", o)
        elif -0x8000 <= o < 0:
            out += b"\xd1" + struct.pack(">h", o)
        elif -0x80000000 <= o < 0:
            out += b"\xd2" + struct.pack(">i", o)
        elif -(1 << 63) <= o < 0:
            out += b"\xd3" + struct.pack(">q", o)
        else:
            raise OverflowError("integer out of msgpack range")
    elif isinstance(o, float):
        out += b"\xcb" + struct.pack(">d", o)
    elif isinstance(o, str):
        b = o.encode("utf-8")
        n = len(b)
        if n < 32:
            out.append(0xA0 | n)
        elif n < 0x100:
            out += b"\xd9" + struct.pack(">B", n)
        elif n < 0x10000:
            out += b"\xda" + struct.pack(">H", n)
        else:
            out += b"\xdb" + struct.pack(">I", n)
        out += b
    elif isinstance(o, (bytes, bytearray, memoryview)):
        b = bytes(o)
        n = len(b)
        if n < 0x100:
            out += b"\xc4" + struct.pack(">B", n)
        elif n < 0x10000:
            out += b"\xc5" + struct.pack(">H", n)
        else:
            out += b"\xc6" + struct.pack(">I", n)
        out += b
    elif isinstance(o, (list, tuple)):
        n = len(o)
        if n < 16:
            out.append(0x90 | n)
        elif n < 0x10000:
            out += b"\xdc" + struct.pack(">H", n)
        else:
            out += b"\xdd" + struct.pack(">I", n)
        for x in o:
            _pack(x, out)
    elif isinstance(o, dict):
        n = len(o)
        if n < 16:
            out.append(0x80 | n)
        elif n < 0x10000:
            out += b"\xde" + struct.pack(">H", n)
        else:
            out += b"\xdf" + struct.pack(">I", n)
        for k, v in o.items():
            _pack(k, out)
            _pack(v, out)
    else:
        raise TypeError("cannot serialize %r for the DHT" % type(o).__name__)


def unpackb(b):
    o, off = _unpack(memoryview(bytes(b)), 0)
    if off != len(b):
        raise ValueError("trailing bytes after a msgpack value")
    return o


_FIXED = {0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q", 0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q",
          0xCA: ">f", 0xCB: ">d"}


def _take(b, off, n):
    if off + n > len(b):
        raise ValueError("truncated msgpack value")
    return b[off:off + n], off + n


def _unpack(b, off):
    if off >= len(b):
        raise ValueError("truncated msgpack value")
    t = b[off]
    off += 1
    if t < 0x80:
        return t, off
    if t >= 0xE0:
        return t - 0x100, off
    if 0xA0 <= t <= 0xBF:
        s, off = _take(b, off, t & 0x1F)
        return bytes(s).decode("utf-8"), off
    if 0x90 <= t <= 0x9F:
        return _array(b, off, t & 0x0F)
    if 0x80 <= t <= 0x8F:
        return _map(b, off, t & 0x0F)
    if t == 0xC0:
        return None, off
    if t in (0xC2, 0xC3):
        return t == 0xC3, off
    if t in _FIXED:
        fmt = _FIXED[t]
        s, off = _take(b, off, struct.calcsize(fmt))
        return struct.unpack(fmt, s)[0], off
    if t in (0xD9, 0xDA, 0xDB, 0xC4, 0xC5, 0xC6):
        fmt = {0xD9: ">B", 0xDA: ">H", 0xDB: ">I", 0xC4: ">B", 0xC5: ">H", 0xC6: ">I"}[t]
        s, off = _take(b, off, struct.calcsize(fmt))
        s, off = _take(b, off, struct.unpack(fmt, s)[0])
        return (bytes(s).decode("utf-8") if t >= 0xD9 else bytes(s)), off
    if t in (0xDC, 0xDD):
        s, off = _take(b, off, 2 if t == 0xDC else 4)
        return _array(b, off, struct.unpack(">H" if t == 0xDC else ">I", s)[0])
    if t in (0xDE, 0xDF):
        s, off = _take(b, off, 2 if t == 0xDE else 4)
        return _map(b, off, struct.unpack(">H" if t == 0xDE else ">I", s)[0])
    raise ValueError("unsupported msgpack type 0x%02x" % t)


def _array(b, off, n):
    out = []
    for _ in range(n):
        o, off = _unpack(b, off)
        out.append(o)
    return out, off


def _map(b, off, n):
    out = {}
    for _ in range(n):
        k, off = _unpack(b, off)
        v, off = _unpack(b, off)
        out[k if not isinstance(k, list) else tuple(k)] = v
    return out, off
