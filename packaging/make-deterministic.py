#!/usr/bin/env python3
"""Removes what differs between two builds of one commit from an ELF file, in place.

* `.swift_modhash`: swiftc stamps every object with a 16-byte module hash, random per invocation and
  read only by its own incremental builds; the linker gathers them into this section. Its bytes are
  zeroed (removing the section would make objcopy rewrite the file's layout and lose RELRO).
* `DW_AT_GNU_dwo_id` of the debug information's skeleton units for clang modules: each names a
  module file (`.pcm`) of the build directory, which the package does not ship, by the signature
  clang gave it, and for the C modules SwiftPM generates a module map for, that signature changes
  from one build to the next. It is replaced by a hash of the unit with the id left out, which is
  the same for the same unit.

* the build id (`.note.gnu.build-id`): the linker computed it before the two changes above, so it
  differs too. It is replaced by the first 20 bytes of the SHA-256 of the whole file with the id's
  bytes zeroed: the same content gives the same id, and the debug file (`dh_strip`) carries it.
  (`debugedit --build-id` cannot do this here: it does not read the DWARF 5 that swiftc writes, and
  leaves the id as it was.)

Usage: make-deterministic.py FILE
"""
import hashlib
import struct
import sys

DW_AT_GNU_dwo_id = 0x2131
DW_FORM_data8 = 0x07
# Sizes of the fixed-size forms (32-bit DWARF); the others are handled in attribute_size.
FIXED = {0x05: 2, 0x06: 4, 0x07: 8, 0x0B: 1, 0x0C: 1, 0x0E: 4, 0x10: 4, 0x11: 1, 0x12: 2, 0x13: 4, 0x14: 8, 0x17: 4,
         0x19: 0, 0x1C: 4, 0x1D: 4, 0x1E: 16, 0x1F: 4, 0x20: 8, 0x21: 0, 0x25: 1, 0x26: 2, 0x27: 3, 0x28: 4,
         0x29: 1, 0x2A: 2, 0x2B: 3, 0x2C: 4}
ULEB_FORMS = {0x0F, 0x15, 0x1A, 0x1B, 0x22, 0x23}


def uleb(data, pos):
    result, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, pos


def abbreviations(abbrev, offset):
    """code -> [(attribute, form)] of the abbreviation table at `offset` (implicit constants skipped)."""
    table, pos = {}, offset
    while True:
        code, pos = uleb(abbrev, pos)
        if code == 0:
            return table
        _tag, pos = uleb(abbrev, pos)
        pos += 1  # has children
        specs = []
        while True:
            attribute, pos = uleb(abbrev, pos)
            form, pos = uleb(abbrev, pos)
            if attribute == 0 and form == 0:
                break
            if form == 0x21:
                _, pos = uleb(abbrev, pos)  # the constant (signed, but skipped alike)
            specs.append((attribute, form))
        table[code] = specs


def attribute_size(info, pos, form, address_size):
    """The bytes an attribute value of `form` at `pos` takes, or None for a form this does not read."""
    if form in FIXED:
        return FIXED[form]
    if form == 0x01:
        return address_size
    if form in ULEB_FORMS or form == 0x0D:  # signed or not, the same bytes
        return uleb(info, pos)[1] - pos
    if form == 0x08:
        return info.index(b"\0", pos) + 1 - pos
    if form in (0x09, 0x18):
        length, start = uleb(info, pos)
        return start - pos + length
    if form == 0x0A:
        return 1 + info[pos]
    return None


def skeleton_ids(info, abbrev):
    """Offsets in `.debug_info` of the DW_AT_GNU_dwo_id (data8) of each unit's first DIE, with the unit's range."""
    found, pos = [], 0
    tables = {}
    while pos + 11 <= len(info):
        length, = struct.unpack_from("<I", info, pos)
        if length >= 0xFFFFFFF0:
            break  # 64-bit DWARF: not written by this toolchain
        end = pos + 4 + length
        version, = struct.unpack_from("<H", info, pos + 4)
        if version <= 4:
            abbrev_offset, = struct.unpack_from("<I", info, pos + 6)
            address_size, die = info[pos + 10], pos + 11
        else:
            unit_type, address_size = info[pos + 6], info[pos + 7]
            abbrev_offset, = struct.unpack_from("<I", info, pos + 8)
            die = pos + 12 + (8 if unit_type in (4, 5) else 0) + (12 if unit_type in (2, 6) else 0)
        if abbrev_offset not in tables:
            tables[abbrev_offset] = abbreviations(abbrev, abbrev_offset)
        code, cursor = uleb(info, die)
        for attribute, form in tables[abbrev_offset].get(code, []):
            if attribute == DW_AT_GNU_dwo_id and form == DW_FORM_data8:
                found.append((cursor, pos, end))
                break
            size = attribute_size(info, cursor, form, address_size)
            if size is None:
                break
            cursor += size
        pos = end
    return found


def main(path):
    with open(path, "r+b") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            sys.exit(f"{path}: not a little-endian ELF64 file")
        shoff, = struct.unpack_from("<Q", head, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", head, 0x3A)

        def header(index):
            f.seek(shoff + index * shentsize)
            name, kind, flags, _addr, offset, size = struct.unpack("<IIQQQQ", f.read(40))
            return name, kind, flags, offset, size

        _, _, _, names_offset, names_size = header(shstrndx)
        f.seek(names_offset)
        names = f.read(names_size)
        sections = {}
        SHT_NOBITS = 8
        for index in range(shnum):
            name, kind, flags, offset, size = header(index)
            if kind != SHT_NOBITS:  # a section with no bytes in the file (in a separate debug file, say)
                sections[names[name:names.index(b"\0", name)].decode()] = (flags, offset, size)

        cleared = 0
        if ".swift_modhash" in sections:
            _, offset, size = sections[".swift_modhash"]
            f.seek(offset)
            f.write(bytes(size))
            cleared = size

        rewritten = 0
        if ".debug_info" in sections and ".debug_abbrev" in sections:
            SHF_COMPRESSED = 0x800
            if sections[".debug_info"][0] & SHF_COMPRESSED or sections[".debug_abbrev"][0] & SHF_COMPRESSED:
                sys.exit(f"{path}: compressed debug sections; run this before they are compressed")
            _, info_offset, info_size = sections[".debug_info"]
            _, abbrev_offset, abbrev_size = sections[".debug_abbrev"]
            f.seek(info_offset)
            info = bytearray(f.read(info_size))
            f.seek(abbrev_offset)
            abbrev = f.read(abbrev_size)
            for at, start, end in skeleton_ids(info, abbrev):
                unit = bytes(info[start:at]) + bytes(info[at + 8:end])
                info[at:at + 8] = hashlib.sha256(unit).digest()[:8]
                rewritten += 1
            f.seek(info_offset)
            f.write(info)

        build_id = None
        if ".note.gnu.build-id" in sections:
            _, offset, size = sections[".note.gnu.build-id"]
            f.seek(offset)
            namesz, descsz, kind = struct.unpack("<III", f.read(12))
            desc = offset + 12 + (namesz + 3) // 4 * 4
            NT_GNU_BUILD_ID = 3
            if kind != NT_GNU_BUILD_ID or desc + descsz > offset + size:
                sys.exit(f"{path}: unexpected .note.gnu.build-id")
            f.seek(desc)
            f.write(bytes(descsz))
            f.seek(0)
            digest = hashlib.sha256()
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
            build_id = digest.digest()[:descsz]
            f.seek(desc)
            f.write(build_id)
    print(f"{path}: {cleared} bytes of .swift_modhash cleared, {rewritten} clang module ids made from their units, "
          f"build id {build_id.hex() if build_id else '(none)'}")


if __name__ == "__main__":
    main(sys.argv[1])
