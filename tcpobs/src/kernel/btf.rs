//! Just enough of a BTF reader to find where a struct member lives.
//!
//! aya-ebpf has no CO-RE relocations, so the daemon reads `struct sock` member offsets from the
//! running kernel's BTF (`/sys/kernel/btf/vmlinux`) and hands them to the programs as a global.
//! The format is the kernel's `Documentation/bpf/btf.rst`: a header, a type section of
//! variable-length records (type ids start at 1), and a string section.

mod bits;

use std::{collections::HashSet, fs, path::Path};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BtfError {
    #[error(
        "cannot read kernel BTF at {path}: {source} (tcpobs needs a kernel built with CONFIG_DEBUG_INFO_BTF=y)"
    )]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {ty} has no member {member}")]
    NoMember { ty: String, member: String },
    #[error("kernel BTF: {ty}.{member} is a bitfield, which tcpobs cannot read")]
    Bitfield { ty: String, member: String },
    #[error("kernel BTF has no function {0}")]
    NoFunction(String),
}

const MAGIC: u16 = 0xeb9f;

/// How deep a chain of types may go: typedefs and qualifiers, arrays of arrays, anonymous
/// members inside anonymous members. The kernel's BTF verifier and libbpf bound their own
/// type-resolution walks at 32 (`MAX_RESOLVE_DEPTH` in `kernel/bpf/btf.c` and in libbpf's
/// `btf.c`), and Linux 6.18's vmlinux nests anonymous members at most 6 deep and chains at
/// most 6 typedefs and qualifiers. A longer chain is a loop or a corrupt blob; following it
/// would overflow the stack.
const MAX_DEPTH: usize = 32;

const TOO_DEEP: BtfError = BtfError::Malformed("types nest too deep (a loop?)");

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// A parsed BTF blob: the raw type section, the position of each type record, the strings.
pub(crate) struct Btf {
    types: Vec<u8>,
    /// `positions[id - 1]` is the byte offset of type `id` in `types`.
    positions: Vec<usize>,
    strings: Vec<u8>,
}

/// Where a member lives: byte offset from the start of the outer struct, and its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Member {
    pub offset: u32,
    pub size: u32,
}

#[derive(Clone, Copy)]
struct TypeHeader {
    name_off: u32,
    kind: u32,
    kind_flag: bool,
    vlen: usize,
    /// `size` for ints, structs, unions, enums; `type` for pointers, typedefs, modifiers.
    size_or_type: u32,
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32, BtfError> {
    bytes
        .get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    /// Reads the running kernel's BTF.
    pub(crate) fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    /// Parses a little-endian BTF blob.
    pub(crate) fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let magic = data
            .get(0..2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or(BtfError::Malformed("truncated header"))?;
        if magic != MAGIC {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let section = |off: usize, len: usize| {
            hdr_len
                .checked_add(off)
                .and_then(|start| data.get(start..start.checked_add(len)?))
                .ok_or(BtfError::Malformed("section out of bounds"))
        };
        let types = section(type_off, type_len)?.to_vec();
        let strings = section(str_off, str_len)?.to_vec();
        let mut positions = Vec::new();
        let mut at = 0;
        while at < types.len() {
            positions.push(at);
            let header = Self::header_at(&types, at)?;
            at += 12 + Self::trailer_len(&header)?;
        }
        Ok(Self {
            types,
            positions,
            strings,
        })
    }

    fn header_at(types: &[u8], at: usize) -> Result<TypeHeader, BtfError> {
        let info = u32_at(types, at + 4)?;
        Ok(TypeHeader {
            name_off: u32_at(types, at)?,
            kind: (info >> 24) & 0x1f,
            kind_flag: info >> 31 == 1,
            vlen: (info & 0xffff) as usize,
            size_or_type: u32_at(types, at + 8)?,
        })
    }

    /// Bytes that follow the 12-byte common header, by kind.
    fn trailer_len(header: &TypeHeader) -> Result<usize, BtfError> {
        Ok(match header.kind {
            KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
            KIND_ARRAY => 12,
            KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * header.vlen,
            KIND_ENUM | KIND_FUNC_PROTO => 8 * header.vlen,
            KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
            | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
            _ => return Err(BtfError::Malformed("unknown type kind")),
        })
    }

    fn string(&self, off: u32) -> &str {
        let tail = self.strings.get(off as usize..).unwrap_or_default();
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        std::str::from_utf8(&tail[..end]).unwrap_or_default()
    }

    fn header(&self, id: u32) -> Result<(usize, TypeHeader), BtfError> {
        let at = *id
            .checked_sub(1)
            .and_then(|index| self.positions.get(index as usize))
            .ok_or(BtfError::Malformed("type id out of range"))?;
        Ok((at, Self::header_at(&self.types, at)?))
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Result<(u32, TypeHeader), BtfError> {
        for _ in 0..MAX_DEPTH {
            let (_, header) = self.header(id)?;
            match header.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = header.size_or_type;
                }
                _ => return Ok((id, header)),
            }
        }
        Err(BtfError::Malformed("type chain too long"))
    }

    /// The size of type `id` in bytes, through arrays (of arrays) to their element type.
    fn size_of(&self, mut id: u32) -> Result<u32, BtfError> {
        const TOO_BIG: BtfError = BtfError::Malformed("array size beyond 4 GiB");
        let mut count: u32 = 1;
        for _ in 0..MAX_DEPTH {
            let (resolved, header) = self.resolve(id)?;
            let size = match header.kind {
                KIND_PTR => 8,
                KIND_ARRAY => {
                    let (at, _) = self.header(resolved)?;
                    id = u32_at(&self.types, at + 12)?;
                    let elements = u32_at(&self.types, at + 20)?;
                    count = count.checked_mul(elements).ok_or(TOO_BIG)?;
                    continue;
                }
                _ => header.size_or_type,
            };
            return size.checked_mul(count).ok_or(TOO_BIG);
        }
        Err(TOO_DEEP)
    }

    /// The id of the struct named `name`.
    fn struct_id(&self, name: &str) -> Result<u32, BtfError> {
        (1..=self.positions.len() as u32)
            .find(|&id| {
                self.header(id).is_ok_and(|(_, header)| {
                    header.kind == KIND_STRUCT && self.string(header.name_off) == name
                })
            })
            .ok_or_else(|| BtfError::NoStruct(name.to_owned()))
    }

    /// Finds `name` among the members of struct/union `id`, looking through anonymous struct
    /// and union members. Returns (bit offset, member type id, bitfield size).
    fn find_member(&self, id: u32, name: &str) -> Result<Option<(u32, u32, u32)>, BtfError> {
        self.find_member_within(id, name, 0, &mut HashSet::new())
    }

    /// [`Self::find_member`] at `depth` anonymous members down. `searched` holds the anonymous
    /// member types already searched in vain, each searched once: BTF deduplication shares
    /// identical anonymous types, and a fuzzed blob whose N levels each name the next level
    /// twice would otherwise take 2^N steps.
    fn find_member_within(
        &self,
        id: u32,
        name: &str,
        depth: usize,
        searched: &mut HashSet<u32>,
    ) -> Result<Option<(u32, u32, u32)>, BtfError> {
        if depth >= MAX_DEPTH {
            return Err(TOO_DEEP);
        }
        let (id, header) = self.resolve(id)?;
        if header.kind != KIND_STRUCT && header.kind != KIND_UNION {
            return Ok(None);
        }
        let (at, _) = self.header(id)?;
        for index in 0..header.vlen {
            let member = at + 12 + 12 * index;
            let member_name = self.string(u32_at(&self.types, member)?);
            let member_type = u32_at(&self.types, member + 4)?;
            let raw_offset = u32_at(&self.types, member + 8)?;
            let (bit_offset, bitfield_size) = if header.kind_flag {
                (raw_offset & 0x00ff_ffff, raw_offset >> 24)
            } else {
                (raw_offset, 0)
            };
            if member_name == name {
                return Ok(Some((bit_offset, member_type, bitfield_size)));
            }
            if member_name.is_empty() && !searched.contains(&member_type) {
                if let Some((inner, ty, bits)) =
                    self.find_member_within(member_type, name, depth + 1, searched)?
                {
                    let offset = bit_offset
                        .checked_add(inner)
                        .ok_or(BtfError::Malformed("member offset beyond 512 MiB"))?;
                    return Ok(Some((offset, ty, bits)));
                }
                searched.insert(member_type);
            }
        }
        Ok(None)
    }

    /// The parameter names of kernel function `name`, in order.
    pub(crate) fn func_params(&self, name: &str) -> Result<Vec<String>, BtfError> {
        let func = (1..=self.positions.len() as u32)
            .find_map(|id| {
                let (_, header) = self.header(id).ok()?;
                (header.kind == KIND_FUNC && self.string(header.name_off) == name)
                    .then_some(header.size_or_type)
            })
            .ok_or_else(|| BtfError::NoFunction(name.to_owned()))?;
        let (at, proto) = self.header(func)?;
        if proto.kind != KIND_FUNC_PROTO {
            return Err(BtfError::Malformed("function without a prototype"));
        }
        (0..proto.vlen)
            .map(|index| {
                let name_off = u32_at(&self.types, at + 12 + 8 * index)?;
                Ok(self.string(name_off).to_owned())
            })
            .collect()
    }

    /// Byte offset and size of a member of `struct ty`, given as a dotted path through nested
    /// named members, e.g. `member("sock", "__sk_common.skc_family")`.
    pub(crate) fn member(&self, ty: &str, path: &str) -> Result<Member, BtfError> {
        let mut id = self.struct_id(ty)?;
        let mut bits: u32 = 0;
        for part in path.split('.') {
            let (offset, member_type, bitfield) =
                self.find_member(id, part)?
                    .ok_or_else(|| BtfError::NoMember {
                        ty: ty.to_owned(),
                        member: path.to_owned(),
                    })?;
            if bitfield != 0 || offset % 8 != 0 {
                return Err(BtfError::Bitfield {
                    ty: ty.to_owned(),
                    member: path.to_owned(),
                });
            }
            bits = bits
                .checked_add(offset)
                .ok_or(BtfError::Malformed("member offset beyond 512 MiB"))?;
            id = member_type;
        }
        Ok(Member {
            offset: bits / 8,
            size: self.size_of(id)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob: `struct outer { int a; union { short b; struct { char c; int d; }; };
    /// struct inner in; }` and `struct inner { long x; unsigned char y[6]; }`.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0short\0char\0long\0outer\0a\0b\0c\0d\0in\0inner\0x\0y\0\0".to_vec();
        let s = |name: &str| {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for word in words {
                types.extend_from_slice(&word.to_le_bytes());
            }
        };
        // 1: int (4 bytes)
        push(&[s("int"), info(KIND_INT, 0), 4, 32]);
        // 2: short
        push(&[s("short"), info(KIND_INT, 0), 2, 16]);
        // 3: char
        push(&[s("char"), info(KIND_INT, 0), 1, 8]);
        // 4: long
        push(&[s("long"), info(KIND_INT, 0), 8, 64]);
        // 5: anonymous struct { char c; int d; }
        push(&[0, info(KIND_STRUCT, 2), 8, s("c"), 3, 0, s("d"), 1, 32]);
        // 6: anonymous union { short b; struct 5; }
        push(&[0, info(KIND_UNION, 2), 8, s("b"), 2, 0, 0, 5, 0]);
        // 7: typedef-free array char[6]
        push(&[0, info(KIND_ARRAY, 0), 0, 3, 1, 6]);
        // 8: struct inner { long x; char y[6]; }
        push(&[
            s("inner"),
            info(KIND_STRUCT, 2),
            16,
            s("x"),
            4,
            0,
            s("y"),
            7,
            64,
        ]);
        // 9: const struct inner
        push(&[0, info(KIND_CONST, 0), 8]);
        // 10: struct outer { int a; union 6; const struct inner in; }
        push(&[
            s("outer"),
            info(KIND_STRUCT, 3),
            32,
            s("a"),
            1,
            0,
            0,
            6,
            32,
            s("in"),
            9,
            128,
        ]);
        // 11: int (*)(int a, long x); 12: func `outer` of that prototype
        push(&[0, info(KIND_FUNC_PROTO, 2), 1, s("a"), 1, s("x"), 4]);
        push(&[s("outer"), info(KIND_FUNC, 0), 11]);
        blob(&types, &strings)
    }

    /// A BTF blob: the 24-byte header, then the type and string sections.
    fn blob(types: &[u8], strings: &[u8]) -> Vec<u8> {
        let mut blob = Vec::new();
        blob.extend_from_slice(&MAGIC.to_le_bytes());
        blob.extend_from_slice(&[1, 0]);
        for word in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            blob.extend_from_slice(&word.to_le_bytes());
        }
        blob.extend_from_slice(types);
        blob.extend_from_slice(strings);
        blob
    }

    /// A blob of the given type records (ids from 1) over the strings `\0int\0s\0m\0`:
    /// name offsets 1 (`int`), 5 (`s`) and 7 (`m`).
    fn records(records: &[&[u32]]) -> Vec<u8> {
        let types: Vec<u8> = records
            .iter()
            .flat_map(|words| words.iter())
            .flat_map(|word| word.to_le_bytes())
            .collect();
        blob(&types, b"\0int\0s\0m\0")
    }

    const INT: u32 = 1;
    const S: u32 = 5;
    const M: u32 = 7;

    fn info(kind: u32, vlen: u32) -> u32 {
        (kind << 24) | vlen
    }

    /// Fuzzed BTF: `struct s`'s anonymous member is a union whose anonymous member is a `const`
    /// of that same union, so looking for a member that `s` lacks walks the chain forever.
    #[test]
    fn an_anonymous_member_that_leads_back_into_its_chain_is_an_error() {
        let btf = Btf::parse(&records(&[
            // 1: int
            &[INT, info(KIND_INT, 0), 4, 32],
            // 2: struct s { int m; <anonymous> 3; }
            &[S, info(KIND_STRUCT, 2), 8, M, 1, 0, 0, 3, 32],
            // 3: union { <anonymous> 4; }
            &[0, info(KIND_UNION, 1), 4, 0, 4, 0],
            // 4: const 3
            &[0, info(KIND_CONST, 0), 3],
        ]))
        .unwrap();
        assert_eq!(btf.member("s", "m").unwrap(), Member { offset: 0, size: 4 });
        assert!(
            matches!(btf.member("s", "missing"), Err(BtfError::Malformed(why)) if why.contains("too deep")),
            "a loop of anonymous members must be malformed BTF, not a stack overflow"
        );
    }

    /// Fuzzed BTF: an array of itself.
    #[test]
    fn an_array_of_itself_is_an_error() {
        let btf = Btf::parse(&records(&[
            &[INT, info(KIND_INT, 0), 4, 32],
            // 2: struct s { 3 m; }
            &[S, info(KIND_STRUCT, 1), 8, M, 3, 0],
            // 3: array of 1 element of type 3 (index type int)
            &[0, info(KIND_ARRAY, 0), 0, 3, 1, 1],
        ]))
        .unwrap();
        assert!(
            matches!(btf.member("s", "m"), Err(BtfError::Malformed(why)) if why.contains("too deep")),
            "an array of itself must be malformed BTF, not a stack overflow"
        );
    }

    /// Fuzzed BTF: `int m[0x4000_0001]`, 4 GiB and 4 bytes, past `u32`.
    #[test]
    fn an_array_whose_size_overflows_is_an_error() {
        let btf = Btf::parse(&records(&[
            &[INT, info(KIND_INT, 0), 4, 32],
            &[S, info(KIND_STRUCT, 1), 8, M, 3, 0],
            // 3: int[0x4000_0001]
            &[0, info(KIND_ARRAY, 0), 0, 1, 1, 0x4000_0001],
        ]))
        .unwrap();
        assert!(
            matches!(btf.member("s", "m"), Err(BtfError::Malformed(why)) if why.contains("4 GiB")),
            "an array size past u32 must be malformed BTF, not an overflow"
        );
    }

    /// Fuzzed BTF: 30 levels of anonymous structs, each with two anonymous members of the
    /// next level; looking for a member nobody has visits the last level once, not 2^30 times.
    #[test]
    fn anonymous_types_shared_by_many_members_are_searched_once() {
        const LEVELS: u32 = 30;
        let mut types: Vec<Vec<u32>> = vec![vec![INT, info(KIND_INT, 0), 4, 32]];
        for level in 0..LEVELS {
            let (id, next) = (2 + level, 3 + level);
            let name = if level == 0 { S } else { 0 };
            types.push(vec![name, info(KIND_STRUCT, 2), 4, 0, next, 0, 0, next, 0]);
            assert_eq!(types.len() as u32, id);
        }
        // The last level: struct { int m; }.
        types.push(vec![0, info(KIND_STRUCT, 1), 4, M, 1, 0]);
        let slices: Vec<&[u32]> = types.iter().map(Vec::as_slice).collect();
        let btf = Btf::parse(&records(&slices)).unwrap();
        assert_eq!(btf.member("s", "m").unwrap(), Member { offset: 0, size: 4 });
        assert!(matches!(
            btf.member("s", "missing"),
            Err(BtfError::NoMember { member, .. }) if member == "missing"
        ));
    }

    #[test]
    fn finds_members_through_anonymous_unions_and_nested_structs() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(
            btf.member("outer", "a").unwrap(),
            Member { offset: 0, size: 4 }
        );
        assert_eq!(
            btf.member("outer", "b").unwrap(),
            Member { offset: 4, size: 2 }
        );
        assert_eq!(
            btf.member("outer", "d").unwrap(),
            Member { offset: 8, size: 4 }
        );
        assert_eq!(
            btf.member("outer", "in.x").unwrap(),
            Member {
                offset: 16,
                size: 8
            }
        );
        assert_eq!(
            btf.member("outer", "in.y").unwrap(),
            Member {
                offset: 24,
                size: 6
            }
        );
    }

    #[test]
    fn finds_function_parameters() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.func_params("outer").unwrap(), ["a", "x"]);
        assert!(matches!(
            btf.func_params("inner"),
            Err(BtfError::NoFunction(_))
        ));
    }

    #[test]
    fn reports_missing_structs_and_members() {
        let btf = Btf::parse(&sample()).unwrap();
        assert!(matches!(btf.member("nope", "a"), Err(BtfError::NoStruct(name)) if name == "nope"));
        assert!(matches!(
            btf.member("outer", "in.z"),
            Err(BtfError::NoMember { member, .. }) if member == "in.z"
        ));
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            Btf::parse(b"hello world, not btf"),
            Err(BtfError::Malformed(_))
        ));
        let mut truncated = sample();
        truncated.truncate(40);
        assert!(Btf::parse(&truncated).is_err());
    }

    #[test]
    fn reads_struct_sock_from_the_running_kernel() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            return;
        }
        let btf = Btf::from_file(path).unwrap();
        let family = btf.member("sock", "__sk_common.skc_family").unwrap();
        assert_eq!(family.size, 2);
        // sock_common sits at the start of struct sock on every kernel.
        assert!(family.offset < 64, "skc_family at {}", family.offset);
        assert_eq!(
            btf.member("sock", "__sk_common.skc_v6_daddr").unwrap().size,
            16
        );
        assert_eq!(btf.member("sock", "sk_protocol").unwrap().size, 2);
        let send = btf.func_params("tcp_sendmsg").unwrap();
        assert_eq!(send[0], "sk");
        assert!(
            btf.func_params("tcp_recvmsg")
                .unwrap()
                .contains(&"flags".to_owned())
        );
    }
}
