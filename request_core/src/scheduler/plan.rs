//! Planning a step: classes highest first, decodes before prompt chunks before admissions,
//! within the token budget; and the step planned beside a paused one.

use policies::Priority;

use super::{Draft, PlannedChunk, Scheduler, StepPlan};
use crate::sequence::SequenceId;

impl<D> Scheduler<D> {
    /// Plans the next step; changes the running set (admissions, preemptions) and grows the
    /// block tables of every planned chunk.
    pub fn plan(&mut self) -> StepPlan {
        self.step += 1;
        let mut draft = Draft {
            left: self.limits.max_batch_tokens,
            ..Draft::default()
        };
        for s in &self.waiting {
            if !draft.plan.backlogged.contains(&s.tenant) {
                draft.plan.backlogged.push(s.tenant.clone());
            }
        }
        let mut higher_class_planned = false;
        for class in Priority::HIGHEST_FIRST {
            draft.class_left = match (higher_class_planned, self.limits.lower_class_step_tokens) {
                (true, Some(cap)) => draft.left.min(cap),
                _ => draft.left,
            };
            self.plan_decodes(class, &mut draft);
            self.plan_prompts(class, &mut draft);
            self.plan_admissions(class, &mut draft);
            higher_class_planned |= self
                .running
                .iter()
                .any(|s| s.share.priority == class && draft.is_planned(s.id));
        }

        self.finish_plan(draft, 0)
    }

    /// The plan of `draft`: a chunk for each planned sequence from index `from` of `running`
    /// on, in `running` order, each marked as served at this step.
    pub(super) fn finish_plan(&mut self, mut draft: Draft, from: usize) -> StepPlan {
        let step = self.step;
        let mut plan = std::mem::take(&mut draft.plan);
        plan.chunks = (from..self.running.len())
            .filter_map(|index| {
                let s = &mut self.running[index];
                let (_, tokens) = draft.chunks.iter().find(|(id, _)| *id == s.id)?;
                s.last_step = step;
                Some(PlannedChunk {
                    index,
                    sequence: s.id,
                    tenant: s.tenant.clone(),
                    tokens: *tokens,
                    prefill: s.is_prefilling(),
                    samples: s.pending() == *tokens,
                })
            })
            .collect();
        plan
    }

    /// Whether a sequence of a class above `class` waits (for [`Self::plan_beside`]).
    pub fn waits_above(&self, class: Priority) -> bool {
        self.waiting.iter().any(|s| s.share.priority > class)
    }

    /// Plans a step to run while the step in flight is paused between layers. The sequences
    /// from `paused_len` on in `running` were admitted during this pause: each gets its next
    /// token (or prompt chunk), so its stream does not wait for the rest of the paused step;
    /// then waiting sequences of classes above `in_flight` (the highest class in the paused
    /// step) are admitted if they fit as they are, each with its first prompt chunk. Nothing
    /// is preempted and no sequence of the paused step changes, so its chunks stay valid;
    /// admitted sequences go to the end of `running`, after every index the paused step uses.
    pub fn plan_beside(&mut self, in_flight: Priority, paused_len: usize) -> StepPlan {
        self.step += 1;
        let mut draft = Draft {
            left: self.limits.max_batch_tokens,
            ..Draft::default()
        };
        for i in paused_len..self.running.len() {
            draft.class_left = draft.left;
            if self.running[i].is_prefilling() {
                self.plan_prompt_chunk(&mut draft, i);
            } else if self.grow_within_free(i, 1) == 1 {
                let id = self.running[i].id;
                self.plan_chunk(&mut draft, id, 1);
            }
        }
        for class in Priority::HIGHEST_FIRST {
            if class <= in_flight {
                break;
            }
            draft.class_left = draft.left;
            while draft.class_left > 0 {
                let Some(index) = self.next_waiting(class) else {
                    break;
                };
                // Only what fits without preemption: a victim could be in the paused step.
                if !self
                    .victims_for(&self.waiting[index])
                    .is_some_and(|victims| victims.is_empty())
                {
                    break;
                }
                self.admit(index, &mut draft);
            }
        }
        self.finish_plan(draft, paused_len)
    }

    /// (1) One token for each decoding sequence of `class`, least recently served first.
    pub(super) fn plan_decodes(&mut self, class: Priority, draft: &mut Draft) {
        let mut order: Vec<(u64, u64, SequenceId)> = self
            .running
            .iter()
            .filter(|s| s.share.priority == class && !s.is_prefilling())
            .map(|s| (s.last_step, s.admission, s.id))
            .collect();
        order.sort_unstable();
        for (_, _, id) in order {
            if draft.class_left == 0 {
                break;
            }
            // An earlier growth may have preempted it.
            let Some(i) = self.index_of(id) else { continue };
            if self.grow_or_preempt(i, 1, draft) {
                self.plan_chunk(draft, id, 1);
            }
        }
    }

    /// (2) Prompts of `class` already admitted continue by chunks, oldest first.
    pub(super) fn plan_prompts(&mut self, class: Priority, draft: &mut Draft) {
        let ids: Vec<SequenceId> = self
            .running
            .iter()
            .filter(|s| s.share.priority == class && s.is_prefilling() && !draft.is_planned(s.id))
            .map(|s| s.id)
            .collect();
        for id in ids {
            if draft.class_left == 0 {
                break;
            }
            // A prompt that finds no free block takes one from the youngest of the lowest class,
            // as a decode does: prompts part-way through must not wait on each other for ever.
            // Its tenant's own youngest gives way when the tenant's KV cap is what stops it.
            while let Some(i) = self.index_of(id) {
                if self.plan_prompt_chunk(draft, i) > 0 {
                    break;
                }
                match self.victim_to_grow(i, 1) {
                    Some(victim) if self.running[victim].id != id => self.preempt(victim, draft),
                    _ => break,
                }
            }
        }
    }

    /// Plans the next prompt chunk of running sequence `i`: at most `prefill_chunk` tokens,
    /// within the class's budget, the free blocks and its tenant's KV cap. Returns the tokens
    /// planned.
    pub(super) fn plan_prompt_chunk(&mut self, draft: &mut Draft, i: usize) -> usize {
        let want = self.running[i]
            .pending()
            .min(self.limits.prefill_chunk)
            .min(draft.class_left);
        let granted = self.grow_within_free(i, want);
        if granted > 0 {
            let id = self.running[i].id;
            self.plan_chunk(draft, id, granted);
        }
        granted
    }

    /// Adds `tokens` of sequence `id` to the step and charges them to its tenant at once, so
    /// the next admission of the same step already sees the service.
    pub(super) fn plan_chunk(&mut self, draft: &mut Draft, id: SequenceId, tokens: usize) {
        let sequence = &self.running[self.index_of(id).expect("planned sequences run")];
        draft.chunks.push((id, tokens));
        draft.left -= tokens;
        draft.class_left -= tokens;
        self.fair_share
            .charge(sequence.tenant.as_str(), tokens, sequence.share.weight);
        let (group, weight) = sequence.share_group();
        self.group_share.charge(group, tokens, weight);
    }
}
