//! LoRA in a step: after a projection's base product over every row, each row of a sequence
//! with an adapter gets its adapter's `scale · B·(A·x)` added at the projection's columns.
//! Rows of one sequence are contiguous, so rows sharing an adapter run together and read its
//! factors while they are in cache (the grouping SGMV does on GPUs); rows without an adapter
//! cost nothing.

use cpu_kernels::isa::Isa;
use cpu_kernels::lowrank::MAX_ROWS;
use cpu_kernels::parallel::{self, SharedMut};

use crate::lora::{LayerAdapter, LoraAdapter, LowRank, Target, MAX_RANK};

/// Which output of a layer the pairs add to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Site {
    /// The stacked Q/K/V output.
    Qkv,
    /// The attention's output projection.
    Output,
    /// The stacked gate/up output.
    GateUp,
    /// The down projection.
    Down,
}

impl Site {
    fn holds(self, target: Target) -> Option<usize> {
        match (self, target) {
            (Site::Qkv, Target::Qkv(col)) | (Site::GateUp, Target::GateUp(col)) => Some(col),
            (Site::Output, Target::Output) | (Site::Down, Target::Down) => Some(0),
            _ => None,
        }
    }
}

/// The step's adapters: one per sequence of the batch (`None`: the base model).
pub(super) struct StepAdapters<'a> {
    per_sequence: Vec<Option<&'a LoraAdapter>>,
    isa: Isa,
}

impl<'a> StepAdapters<'a> {
    /// Each sequence's adapter; nothing kept (nor allocated) when none has one, the usual step.
    pub(super) fn new(
        isa: Isa,
        per_sequence: impl ExactSizeIterator<Item = Option<&'a LoraAdapter>> + Clone,
    ) -> Self {
        let any = per_sequence.clone().any(|a| a.is_some());
        Self {
            per_sequence: if any {
                per_sequence.collect()
            } else {
                Vec::new()
            },
            isa,
        }
    }

    /// Whether any sequence has one.
    pub(super) fn any(&self) -> bool {
        !self.per_sequence.is_empty()
    }

    /// For each row (`rows[r] = (sequence, position)`) whose sequence has an adapter with pairs
    /// at `site` in `layer`: `out[r][col..] += scale · B·(A·input[r])`, with `in_width` and
    /// `out_width` values per row.
    ///
    /// Rows are taken adapter by adapter, and each pair over all its rows before the next: a
    /// pair's factors are then read from memory once per step rather than once per row (16
    /// rows over 4 rank-16 adapters of a 135M model would otherwise stream 300 MB a step).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn add(
        &self,
        layer: usize,
        site: Site,
        rows: &[(usize, usize)],
        input: &[f32],
        in_width: usize,
        out: &mut [f32],
        out_width: usize,
    ) {
        if !self.any() {
            return;
        }
        let adapter_of = |r: usize| self.per_sequence[rows[r].0];
        let mut order: Vec<usize> = (0..rows.len())
            .filter(|&r| adapter_of(r).is_some_and(|a| a.layer(layer).is_some()))
            .collect();
        order.sort_by_key(|&r| adapter_of(r).map(|a| a as *const LoraAdapter));
        let out = SharedMut::new(&mut out[..rows.len() * out_width]);
        let grain = parallel::grain_for(order.len(), 1);
        parallel::for_each_chunk(order.len(), grain, |_, range| {
            let mut t = [0f32; MAX_ROWS * MAX_RANK];
            let mut batch: Vec<(&[f32], &mut [f32])> = Vec::with_capacity(MAX_ROWS);
            let mut chunk = &order[range];
            while let Some(&first) = chunk.first() {
                let adapter = adapter_of(first).expect("ordered rows have adapters");
                let same = chunk
                    .iter()
                    .take_while(|&&r| adapter_of(r).is_some_and(|a| std::ptr::eq(a, adapter)))
                    .count();
                let (group, rest) = chunk.split_at(same);
                chunk = rest;
                let pairs = adapter.layer(layer).expect("ordered rows have this layer");
                for (pair, col) in at_site(pairs, site) {
                    // Up to four rows at a time share every load of the pair's factors.
                    for rows in group.chunks(MAX_ROWS) {
                        batch.clear();
                        for &r in rows {
                            let x = &input[r * in_width..(r + 1) * in_width];
                            // SAFETY: row `r` of `out` is written by this work item alone
                            // (each row is in `order` once), and once per pair.
                            let y = unsafe { out.slice(r * out_width..(r + 1) * out_width) };
                            batch.push((x, &mut y[col..col + pair.n_out()]));
                        }
                        pair.apply_rows(self.isa, &mut batch, adapter.scale(), &mut t);
                    }
                }
            }
        });
    }
}

fn at_site(pairs: &LayerAdapter, site: Site) -> impl Iterator<Item = (&LowRank, usize)> {
    pairs
        .pairs
        .iter()
        .filter_map(move |p| site.holds(p.target).map(|col| (p, col)))
}
