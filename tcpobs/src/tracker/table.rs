//! The live table: connections by socket address.
//!
//! A hash map of whole connections would size its buckets for its load factor: with
//! 200,000 connections (100,000 on loopback, both ends traced) it holds 262,144 buckets of
//! the full connection size. Here the map holds only slot numbers, and the connections live
//! in fixed-size chunks that never move, so memory follows the number of connections (at
//! the peak: freed slots are reused, not returned).

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
};

use super::Conn;

/// Connections per chunk.
const CHUNK: usize = 1024;

/// Hashes socket addresses: a folded multiply spreads kernel pointers (whose low bits are
/// always zero) over the table, at a fraction of SipHash's cost; nothing here needs SipHash's
/// resistance to chosen keys.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SockHasher(u64);

impl Hasher for SockHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, value: u64) {
        let product = u128::from(self.0 ^ value) * 0x9e37_79b9_7f4a_7c15;
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Live connections by socket address.
#[derive(Debug, Default)]
pub(super) struct Table {
    slots: HashMap<u64, u32, BuildHasherDefault<SockHasher>>,
    chunks: Vec<Vec<Option<Conn>>>,
    free: Vec<u32>,
}

fn split(slot: u32) -> (usize, usize) {
    let slot = slot as usize;
    (slot / CHUNK, slot % CHUNK)
}

impl Table {
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    fn slot(&self, slot: u32) -> &Option<Conn> {
        let (chunk, index) = split(slot);
        &self.chunks[chunk][index]
    }

    fn slot_mut(&mut self, slot: u32) -> &mut Option<Conn> {
        let (chunk, index) = split(slot);
        &mut self.chunks[chunk][index]
    }

    pub(super) fn get(&self, sock: u64) -> Option<&Conn> {
        self.slot(*self.slots.get(&sock)?).as_ref()
    }

    pub(super) fn get_mut(&mut self, sock: u64) -> Option<&mut Conn> {
        let slot = *self.slots.get(&sock)?;
        self.slot_mut(slot).as_mut()
    }

    /// Adds `conn` for `sock`, returning the connection it replaces.
    pub(super) fn insert(&mut self, sock: u64, conn: Conn) -> Option<Conn> {
        if let Some(&slot) = self.slots.get(&sock) {
            return self.slot_mut(slot).replace(conn);
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                *self.slot_mut(slot) = Some(conn);
                slot
            }
            None => {
                if self.chunks.last().is_none_or(|chunk| chunk.len() == CHUNK) {
                    self.chunks.push(Vec::with_capacity(CHUNK));
                }
                let chunks = self.chunks.len();
                let last = self.chunks.last_mut().expect("pushed above");
                last.push(Some(conn));
                u32::try_from((chunks - 1) * CHUNK + last.len() - 1)
                    .expect("fewer than 2^32 connections")
            }
        };
        self.slots.insert(sock, slot);
        None
    }

    pub(super) fn remove(&mut self, sock: u64) -> Option<Conn> {
        let slot = self.slots.remove(&sock)?;
        self.free.push(slot);
        self.slot_mut(slot).take()
    }

    /// Every connection, in no particular order.
    #[cfg(test)]
    pub(super) fn values(&self) -> impl Iterator<Item = &Conn> {
        self.chunks.iter().flatten().flatten()
    }

    /// Every connection with its socket, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, &Conn)> {
        self.slots
            .iter()
            .filter_map(|(&sock, &slot)| Some((sock, self.slot(slot).as_ref()?)))
    }

    /// Calls `visit` with every connection and its socket, in no particular order.
    pub(super) fn for_each_mut(&mut self, mut visit: impl FnMut(u64, &mut Conn)) {
        for (&sock, &slot) in &self.slots {
            let (chunk, index) = split(slot);
            if let Some(conn) = &mut self.chunks[chunk][index] {
                visit(sock, conn);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Role;

    fn conn(id: u64) -> Conn {
        Conn::new(id, id, Role::Client, false)
    }

    #[test]
    fn slots_are_reused_and_lookups_follow() {
        let mut table = Table::default();
        for sock in 0..3 * CHUNK as u64 {
            assert!(table.insert(sock * 64, conn(sock)).is_none());
        }
        assert_eq!(table.len(), 3 * CHUNK);
        assert_eq!(table.chunks.len(), 3);
        for sock in 0..CHUNK as u64 {
            assert_eq!(table.remove(sock * 64).map(|c| c.id), Some(sock));
        }
        assert!(table.remove(0).is_none(), "already gone");
        for sock in 0..CHUNK as u64 {
            table.insert(1 << 40 | sock, conn(10_000 + sock));
        }
        assert_eq!(table.chunks.len(), 3, "freed slots were reused");
        assert_eq!(table.get(1 << 40 | 5).map(|c| c.id), Some(10_005));
        assert_eq!(table.get(2 * 64).map(|c| c.id), None);
        assert_eq!(
            table.get(CHUNK as u64 * 64).map(|c| c.id),
            Some(CHUNK as u64)
        );
        let replaced = table.insert(CHUNK as u64 * 64, conn(7));
        assert_eq!(replaced.map(|c| c.id), Some(CHUNK as u64));
        assert_eq!(table.len(), 3 * CHUNK);
        let mut ids: Vec<u64> = table.values().map(|c| c.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 3 * CHUNK);
        table.for_each_mut(|sock, conn| conn.exchanges = (sock & 0xff) as u32 + 1);
        assert!(
            table
                .iter()
                .all(|(sock, c)| c.exchanges == (sock & 0xff) as u32 + 1)
        );
    }
}
