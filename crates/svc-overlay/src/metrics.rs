//! What the overlay shows in `/metrics`, read at scrape time: queue depth, uploads in progress,
//! cache effectiveness and storage totals.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::OverlayHandle;

#[derive(Debug)]
pub(crate) struct OverlayCollector {
    pub(crate) handle: OverlayHandle,
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

impl Collector for OverlayCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let h = &self.handle;
        gauge(
            &mut encoder,
            "overlay_queue_depth",
            "Commands waiting for the overlay actor",
            h.queue_depth() as u64,
        )?;
        gauge(
            &mut encoder,
            "overlay_uploads",
            "Uploads in progress",
            h.uploads_in_progress() as u64,
        )?;
        gauge(
            &mut encoder,
            "overlay_small_cache_bytes",
            "Bytes of verified small objects held in memory",
            h.small_cache_bytes() as u64,
        )?;
        let c = &h.guard.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        counter(
            &mut encoder,
            "durability_shards_kept",
            "Shards this node accepted to keep for peers",
            load(&c.shards_kept),
        )?;
        counter(
            &mut encoder,
            "durability_shards_placed",
            "Shards this node placed on peers (first placement and repair)",
            load(&c.shards_placed),
        )?;
        counter(
            &mut encoder,
            "durability_repairs",
            "Chunks rebuilt from shards and placed again",
            load(&c.repairs),
        )?;
        counter(
            &mut encoder,
            "durability_repair_read_bytes",
            "Shard bytes read to rebuild chunks",
            load(&c.repair_bytes_read),
        )?;
        counter(
            &mut encoder,
            "durability_repair_written_bytes",
            "Shard bytes written to peers",
            load(&c.repair_bytes_written),
        )?;
        let (degraded, lost) = h.guard.counts();
        gauge(
            &mut encoder,
            "durability_degraded_objects",
            "Watched objects with a chunk below its k+m holders",
            degraded,
        )?;
        gauge(
            &mut encoder,
            "durability_lost_objects",
            "Watched objects with a chunk below k holders",
            lost,
        )?;
        let index = h.index().stats();
        counter(
            &mut encoder,
            "index_cache_hits",
            "Manifest lookups answered from the cache",
            index.hits,
        )?;
        counter(
            &mut encoder,
            "index_cache_misses",
            "Manifest lookups that read the store",
            index.misses,
        )?;
        gauge(
            &mut encoder,
            "index_cache_entries",
            "Manifests cached",
            index.cached as u64,
        )?;
        match h.store.stats_now() {
            Ok(s) => {
                gauge(&mut encoder, "storage_objects", "Objects stored", s.objects)?;
                gauge(
                    &mut encoder,
                    "storage_chunks",
                    "Distinct chunks stored",
                    s.chunks,
                )?;
                gauge(
                    &mut encoder,
                    "storage_bytes_stored",
                    "Bytes of distinct chunks on disk",
                    s.bytes_stored,
                )?;
                gauge(
                    &mut encoder,
                    "storage_bytes_logical",
                    "Bytes of all objects as if stored whole",
                    s.bytes_logical,
                )?;
            }
            Err(e) => tracing::warn!(error = %e, "cannot read storage figures for /metrics"),
        }
        if let Some(free) = h.store.free_bytes() {
            gauge(
                &mut encoder,
                "storage_free_bytes",
                "Bytes free on the file system holding the data dir",
                free,
            )?;
        }
        counter(
            &mut encoder,
            "storage_writes_refused_full",
            "Writes refused since start for leaving less than storage.min_free_bytes free",
            h.store.refused_full(),
        )?;
        counter(
            &mut encoder,
            "storage_chunks_repaired",
            "Damaged chunk files replaced by verified bytes since start",
            h.store.repaired_chunks(),
        )?;
        Ok(())
    }
}
