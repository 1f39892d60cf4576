#!/usr/bin/env python3
"""Writes the seed corpus for fuzzing the readers of outside data (Python standard library only).

    python3 tests/corpus/make_corpus.py        # from the repository root; rewrites the files

Each folder holds a few tiny valid inputs (a fuzzer mutates these into deep paths) and a few
invalid ones (each a different refusal). The expected outcome is in the name: ok_* must load,
bad_* must be refused with diffuse::Error.
"""
import gzip
import os
import struct
import zlib

ROOT = os.path.dirname(os.path.abspath(__file__))


def put(sub, name, data):
    os.makedirs(os.path.join(ROOT, sub), exist_ok=True)
    with open(os.path.join(ROOT, sub, name), "wb") as f:
        f.write(data)


# ---- safetensors ------------------------------------------------------------------------------
def st(header, buf, claimed=None):
    h = header.encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h) if claimed is None else claimed) + h + buf


def entry(name, dtype, shape, begin, end):
    return '"%s":{"dtype":"%s","shape":%s,"data_offsets":[%d,%d]}' % (name, dtype, shape, begin, end)


f32 = struct.pack("<4f", 1.5, -2.0, 0.25, 3.0)
put("safetensors", "ok_reference.safetensors",  # as written by the reference implementation
    st('{"__metadata__":{"config":"{\\"ch\\": 64}"},' + entry("step", "I64", "[1]", 0, 8) + "," +
       entry("w", "F32", "[2,2]", 8, 24) + "}", struct.pack("<q", 7) + f32))
put("safetensors", "ok_dtypes.safetensors",
    st("{" + ",".join([entry("a", "BF16", "[2]", 0, 4), entry("b", "F16", "[2]", 4, 8), entry("c", "U8", "[3]", 8, 11),
                       entry("d", "F64", "[]", 11, 19), entry("e", "I32", "[0,2]", 19, 19)]) + "}",
       bytes(range(19))))
put("safetensors", "bad_overlap.safetensors",
    st("{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("b", "F32", "[2]", 4, 12) + "}", bytes(12)))
put("safetensors", "bad_header_length.safetensors", st("{}", b"", claimed=1 << 40))
put("safetensors", "bad_shape_overflow.safetensors",
    st("{" + entry("a", "F32", "[4294967296,4294967296,2]", 0, 0) + "}", b""))

# ---- IDX --------------------------------------------------------------------------------------
pixels = bytes((i * 37) & 255 for i in range(3 * 4 * 4))
images = struct.pack(">IIII", 0x803, 3, 4, 4) + pixels
labels = struct.pack(">II", 0x801, 3) + bytes([0, 9, 4])
put("idx", "ok_images-idx3-ubyte", images)
put("idx", "ok_labels-idx1-ubyte.gz", gzip.compress(labels, mtime=0))
put("idx", "bad_truncated-idx3-ubyte", images[:-5])
put("idx", "bad_magic-idx3-ubyte", struct.pack(">IIII", 0x801, 3, 4, 4) + pixels)

# ---- CIFAR-10 ---------------------------------------------------------------------------------
record = bytes([3]) + bytes((p * 7) & 255 for p in range(3072))
put("cifar", "ok_one_record.bin", record)
put("cifar", "bad_label.bin", bytes([10]) + record[1:])
put("cifar", "bad_size.bin", record + b"\x01\x02")


# ---- images -----------------------------------------------------------------------------------
def png(width, height, channels, rows):
    color = {1: 0, 3: 2}[channels]
    raw = b"".join(b"\x00" + bytes(r) for r in rows)  # filter type 0 on every row

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


grey = png(4, 4, 1, [[(x * 60 + y * 10) & 255 for x in range(4)] for y in range(4)])
rgb = png(3, 2, 3, [[v for x in range(3) for v in (x * 80, y * 120, 200)] for y in range(2)])
put("images", "ok_grey_4x4.png", grey)
put("images", "ok_rgb_3x2.png", rgb)
put("images", "bad_truncated.png", rgb[: len(rgb) // 2])
put("images", "bad_not_a_jpeg.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00")
