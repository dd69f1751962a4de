//! LoRA in a step: after a projection's base product over every row, each row of a sequence
//! with an adapter gets its adapter's `scale · B·(A·x)` added at the projection's columns.
//! Rows of one sequence are contiguous, so rows sharing an adapter run together and read its
//! factors while they are in cache (the grouping SGMV does on GPUs); rows without an adapter
//! cost nothing.

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
}

impl<'a> StepAdapters<'a> {
    /// Each sequence's adapter; nothing kept (nor allocated) when none has one, the usual step.
    pub(super) fn new(
        per_sequence: impl ExactSizeIterator<Item = Option<&'a LoraAdapter>> + Clone,
    ) -> Self {
        let any = per_sequence.clone().any(|a| a.is_some());
        Self {
            per_sequence: if any {
                per_sequence.collect()
            } else {
                Vec::new()
            },
        }
    }

    /// Whether any sequence has one.
    pub(super) fn any(&self) -> bool {
        !self.per_sequence.is_empty()
    }

    /// For each row (`rows[r] = (sequence, position)`) whose sequence has an adapter with pairs
    /// at `site` in `layer`: `out[r][col..] += scale · B·(A·input[r])`, with `in_width` and
    /// `out_width` values per row.
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
        grain: usize,
    ) {
        if !self.any() {
            return;
        }
        let out = SharedMut::new(&mut out[..rows.len() * out_width]);
        parallel::for_each_chunk(rows.len(), grain, |_, range| {
            let mut t = [0f32; MAX_RANK];
            for r in range {
                let Some(adapter) = self.per_sequence[rows[r].0] else {
                    continue;
                };
                let Some(pairs) = adapter.layer(layer) else {
                    continue;
                };
                let x = &input[r * in_width..(r + 1) * in_width];
                // SAFETY: row `r` of `out` is written by this work item alone.
                let y = unsafe { out.slice(r * out_width..(r + 1) * out_width) };
                for (pair, col) in at_site(pairs, site) {
                    pair.apply(x, &mut y[col..], adapter.scale(), &mut t);
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
