#!/usr/bin/env python3
"""Zeroes the `.swift_modhash` section of an ELF file in place.

swiftc stamps every object it compiles with a 16-byte module hash that is random per invocation and
read only by its own incremental builds; the linker gathers them into `.swift_modhash`. Zeroing the
bytes (rather than removing the section, which makes objcopy rewrite the file's layout and lose
RELRO) leaves the binary as it was, minus the randomness; `debugedit --build-id` then recomputes the
build id from the contents. Usage: clear-swift-modhash.py FILE
"""
import struct
import sys

path = sys.argv[1]
with open(path, "r+b") as f:
    data = f.read(64)
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        sys.exit(f"{path}: not a little-endian ELF64 file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(index):
        f.seek(shoff + index * shentsize)
        name, _type, _flags, _addr, offset, size = struct.unpack("<IIQQQQ", f.read(40))
        return name, offset, size

    _, names_offset, names_size = header(shstrndx)
    f.seek(names_offset)
    names = f.read(names_size)
    cleared = 0
    for index in range(shnum):
        name, offset, size = header(index)
        if names[name:names.index(b"\0", name)] == b".swift_modhash":
            f.seek(offset)
            f.write(bytes(size))
            cleared += size
print(f"{path}: {cleared} bytes of .swift_modhash cleared")
