//! Keeps shm-layout.md true: every table row whose first cell is a backticked name must give
//! the offset and size the code has, and every name the code knows must be documented.
use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};

use crossbeam_utils::CachePadded;
use rinha::shm::health::BoardRaw;
use rinha::shm::ids::IdEntry;
use rinha::shm::member::{InFlightSlot, MemberEntry};
use rinha::shm::ring::{RingCtl, Slot};
use rinha::shm::stats_log::{ChunkHeader, LogCtl, Record};
use rinha::shm::{Header, Layout, ProcessorHealth, RegionConfig};

fn code() -> BTreeMap<&'static str, (usize, usize)> {
    let l = Layout::of(&RegionConfig::default()).expect("default layout");
    let cfg = RegionConfig::default();
    let mut m = BTreeMap::new();
    let mut put = |k: &'static str, off: usize, size: usize| {
        m.insert(k, (off, size));
    };
    put("header", 0, 4096);
    put("members", l.members, cfg.max_members as usize * 64);
    put("health", l.health, size_of::<BoardRaw>());
    put("ring_ctl", l.ring_ctl, size_of::<RingCtl>());
    put(
        "ring_slots",
        l.ring_slots,
        cfg.ring_capacity as usize * size_of::<Slot>(),
    );
    put(
        "inflight",
        l.inflight,
        (cfg.max_members * cfg.inflight_per_member) as usize * size_of::<InFlightSlot>(),
    );
    put("log_ctl", l.log_ctl, size_of::<LogCtl>());
    put(
        "log_chunks",
        l.log_chunks,
        cfg.log_capacity as usize / 1024 * size_of::<ChunkHeader>(),
    );
    put(
        "log_records",
        l.log_records,
        cfg.log_capacity as usize * size_of::<Record>(),
    );
    put("ids_ctl", l.ids_ctl, 128);
    put(
        "ids",
        l.ids,
        cfg.id_capacity as usize * size_of::<IdEntry>(),
    );
    put("file", 0, l.size);
    put("Header.magic", offset_of!(Header, magic), 8);
    put("Header.version", offset_of!(Header, version), 8);
    put("Header.file_size", offset_of!(Header, file_size), 8);
    put("Header.ring_capacity", offset_of!(Header, ring_capacity), 8);
    put("Header.log_capacity", offset_of!(Header, log_capacity), 8);
    put("Header.max_members", offset_of!(Header, max_members), 8);
    put(
        "Header.inflight_per_member",
        offset_of!(Header, inflight_per_member),
        8,
    );
    put("Header.id_capacity", offset_of!(Header, id_capacity), 8);
    put("Header.generation", offset_of!(Header, generation), 8);
    put("Header.created_ms", offset_of!(Header, created_ms), 8);
    put("MemberEntry.role", offset_of!(MemberEntry, role), 8);
    put("MemberEntry.pid", offset_of!(MemberEntry, pid), 8);
    put(
        "MemberEntry.joined_ms",
        offset_of!(MemberEntry, joined_ms),
        8,
    );
    put("MemberEntry", 0, size_of::<MemberEntry>());
    put(
        "ProcessorHealth.failing",
        offset_of!(ProcessorHealth, failing),
        4,
    );
    put(
        "ProcessorHealth.min_response_ms",
        offset_of!(ProcessorHealth, min_response_ms),
        4,
    );
    put(
        "ProcessorHealth.polled_at_ms",
        offset_of!(ProcessorHealth, polled_at_ms),
        8,
    );
    put(
        "ProcessorHealth.latency_ewma_us",
        offset_of!(ProcessorHealth, latency_ewma_us),
        4,
    );
    put(
        "ProcessorHealth.consecutive_failures",
        offset_of!(ProcessorHealth, consecutive_failures),
        4,
    );
    put(
        "ProcessorHealth.last_failure_ms",
        offset_of!(ProcessorHealth, last_failure_ms),
        8,
    );
    put(
        "ProcessorHealth.last_success_ms",
        offset_of!(ProcessorHealth, last_success_ms),
        8,
    );
    put(
        "ProcessorHealth.slow_seen_ms",
        offset_of!(ProcessorHealth, slow_seen_ms),
        8,
    );
    put(
        "ProcessorHealth.poll_tried_ms",
        offset_of!(ProcessorHealth, poll_tried_ms),
        8,
    );
    assert!(size_of::<ProcessorHealth>() <= size_of::<CachePadded<ProcessorHealth>>());
    put(
        "BoardRaw.lease_holder",
        offset_of!(BoardRaw, lease_holder),
        4,
    );
    put(
        "BoardRaw.lease_renewed_ms",
        offset_of!(BoardRaw, lease_renewed_ms),
        8,
    );
    put("RingCtl.head", offset_of!(RingCtl, head), 8);
    put("RingCtl.tail", offset_of!(RingCtl, tail), 8);
    put("RingCtl.seq", offset_of!(RingCtl, seq), 4);
    put("RingCtl.waiters", offset_of!(RingCtl, waiters), 4);
    put("Slot.stamp", offset_of!(Slot, stamp), 8);
    put("Slot.words", offset_of!(Slot, words), 56);
    put("Slot", 0, size_of::<Slot>());
    put("InFlightSlot.state", offset_of!(InFlightSlot, state), 8);
    put("InFlightSlot.words", offset_of!(InFlightSlot, words), 56);
    put("InFlightSlot", 0, size_of::<InFlightSlot>());
    put("LogCtl.head", offset_of!(LogCtl, head), 8);
    put("LogCtl.floor", offset_of!(LogCtl, floor), 8);
    put("Record.stamp", offset_of!(Record, stamp), 8);
    put(
        "Record.requested_at_ms",
        offset_of!(Record, requested_at_ms),
        8,
    );
    put("Record.cents", offset_of!(Record, cents), 8);
    put("Record.processor", offset_of!(Record, processor), 8);
    put("Record.id_lo", offset_of!(Record, id_lo), 8);
    put("Record.id_hi", offset_of!(Record, id_hi), 8);
    put("Record", 0, size_of::<Record>());
    put("ChunkHeader.sealed", offset_of!(ChunkHeader, sealed), 8);
    put("ChunkHeader.min_ms", offset_of!(ChunkHeader, min_ms), 8);
    put("ChunkHeader.max_ms", offset_of!(ChunkHeader, max_ms), 8);
    put("ChunkHeader.totals", offset_of!(ChunkHeader, totals), 32);
    put("ChunkHeader", 0, size_of::<ChunkHeader>());
    put("IdEntry.tag", 0, 8);
    put("IdEntry.lo", 8, 8);
    put("IdEntry.hi", 16, 8);
    put("IdEntry", 0, size_of::<IdEntry>());
    m
}

#[test]
fn shm_layout_md_matches_the_code() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/shm-layout.md"))
        .expect("shm-layout.md");
    let code = code();
    let mut documented = BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[1].starts_with('`') {
            continue;
        }
        let name = cells[1].trim_matches('`');
        let offset: usize = cells[2]
            .parse()
            .unwrap_or_else(|_| panic!("offset of {name}: {:?}", cells[2]));
        let size: usize = cells[3]
            .parse()
            .unwrap_or_else(|_| panic!("size of {name}: {:?}", cells[3]));
        documented.insert(name.to_string(), (offset, size));
    }
    for (name, want) in &code {
        assert_eq!(
            documented.get(*name),
            Some(want),
            "shm-layout.md row `{name}` (offset, size)"
        );
    }
    for name in documented.keys() {
        assert!(
            code.contains_key(name.as_str()),
            "shm-layout.md documents `{name}`, which the code does not have"
        );
    }
    assert!(doc.contains(&format!(
        "Layout version: **{}**",
        rinha::shm::LAYOUT_VERSION
    )));
}
