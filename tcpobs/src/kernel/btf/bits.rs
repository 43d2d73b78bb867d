//! More of the BTF reader, for the diagnostics (issue 15): members that may be bitfields,
//! enumerators, and the arguments a `tp_btf` program of a tracepoint sees.

use super::{BtfError, KIND_ENUM, KIND_ENUM64, KIND_FUNC_PROTO, KIND_TYPEDEF, MAX_DEPTH, u32_at};

/// Where a member lives, to the bit: bit offset from the start of the struct, and its width
/// in bits if it is a bitfield (0 if not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MemberBits {
    pub bit_offset: u32,
    pub bitfield: u32,
}

impl super::Btf {
    /// Like [`super::Btf::member`], but bitfields are allowed (`tcp_sock.chrono_type` is a
    /// 2-bit field before Linux 6.8).
    pub(crate) fn member_bits(&self, ty: &str, path: &str) -> Result<MemberBits, BtfError> {
        let mut id = self.struct_id(ty)?;
        let mut bits: u32 = 0;
        let mut bitfield = 0;
        for part in path.split('.') {
            let (offset, member_type, width) =
                self.find_member(id, part)?
                    .ok_or_else(|| BtfError::NoMember {
                        ty: ty.to_owned(),
                        member: path.to_owned(),
                    })?;
            bits = bits
                .checked_add(offset)
                .ok_or(BtfError::Malformed("member offset beyond 512 MiB"))?;
            id = member_type;
            bitfield = width;
        }
        Ok(MemberBits {
            bit_offset: bits,
            bitfield,
        })
    }

    /// The enumerators of `enum name`, with their values.
    pub(crate) fn enum_values(&self, name: &str) -> Result<Vec<(String, i64)>, BtfError> {
        for id in 1..=self.positions.len() as u32 {
            let (at, header) = self.header(id)?;
            if !matches!(header.kind, KIND_ENUM | KIND_ENUM64)
                || self.string(header.name_off) != name
            {
                continue;
            }
            let step = if header.kind == KIND_ENUM { 8 } else { 12 };
            return (0..header.vlen)
                .map(|index| {
                    let entry = at + 12 + step * index;
                    let name = self.string(u32_at(&self.types, entry)?).to_owned();
                    let low = u32_at(&self.types, entry + 4)?;
                    let value = if header.kind == KIND_ENUM {
                        i64::from(low as i32)
                    } else {
                        let high = u32_at(&self.types, entry + 8)?;
                        ((u64::from(high) << 32) | u64::from(low)) as i64
                    };
                    Ok((name, value))
                })
                .collect();
        }
        Err(BtfError::NoStruct(format!("enum {name}")))
    }

    /// How many arguments a `tp_btf` program of tracepoint `name` sees: the parameters of the
    /// kernel's `btf_trace_<name>` typedef, less its leading `void *__data`.
    pub(crate) fn tracepoint_args(&self, name: &str) -> Result<usize, BtfError> {
        let wanted = format!("btf_trace_{name}");
        for id in 1..=self.positions.len() as u32 {
            let (_, header) = self.header(id)?;
            if header.kind != KIND_TYPEDEF || self.string(header.name_off) != wanted {
                continue;
            }
            // typedef -> pointer -> function prototype.
            let mut ty = header.size_or_type;
            for _ in 0..MAX_DEPTH {
                let (_, resolved) = self.resolve(ty)?;
                if resolved.kind == KIND_FUNC_PROTO {
                    return Ok(resolved.vlen.saturating_sub(1));
                }
                ty = resolved.size_or_type;
            }
            return Err(BtfError::Malformed(
                "tracepoint typedef without a prototype",
            ));
        }
        Err(BtfError::NoFunction(wanted))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Btf;

    #[test]
    fn reads_bitfields_enums_and_tracepoints_from_the_running_kernel() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            return;
        }
        let btf = Btf::from_file(path).unwrap();
        let chrono = btf.member_bits("tcp_sock", "chrono_type").unwrap();
        assert!(chrono.bitfield <= 8, "{chrono:?}");
        let reasons = btf.enum_values("skb_drop_reason").unwrap();
        assert!(
            reasons
                .iter()
                .any(|(name, _)| name == "SKB_DROP_REASON_NOT_SPECIFIED"),
            "{reasons:?}"
        );
        assert_eq!(btf.tracepoint_args("tcp_destroy_sock").unwrap(), 1);
        assert_eq!(btf.tracepoint_args("inet_sock_set_state").unwrap(), 3);
        assert!(btf.tracepoint_args("kfree_skb").unwrap() >= 3);
    }
}
