//! The scheduler against fake steps: no model, the KV pool a map from slots to tokens.
use super::*;
use crate::block_pool::blocks_for;
use engine_api::TokenEvent;
use policies::Share;
use proptest::prelude::*;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedReceiver;

/// The tests' decoding state: how many tokens a sequence generates (no model samples here).
#[derive(Debug, Clone, Copy)]
struct Budget {
    max_tokens: usize,
}

fn limits() -> SchedulerLimits {
    SchedulerLimits {
        max_batch_tokens: 8,
        max_running: 4,
        prefill_chunk: 4,
        block_size: 2,
        fair_share: true,
        lower_class_step_tokens: None,
        reserved_interactive_slots: 0,
    }
}

/// A sequence of `tenant` and its receiver (dropping it cancels the sequence).
fn sequence_of(
    id: SequenceId,
    tenant: &str,
    share: Share,
    prompt: usize,
    max_tokens: usize,
) -> (Sequence<Budget>, UnboundedReceiver<TokenEvent>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut s = Sequence::new(
        id,
        tenant.parse().unwrap(),
        vec![1; prompt],
        Budget { max_tokens },
        tx,
        Instant::now(),
    );
    s.share = share;
    (s, rx)
}

fn sequence(id: SequenceId, prompt: usize) -> Sequence<Budget> {
    let (s, rx) = sequence_of(id, "t", Share::default(), prompt, 8);
    std::mem::forget(rx); // keep the channel open: the sequence is not cancelled
    s
}

/// Queues `s` as the engine does: its tenant's waiting gauge counts it from submission.
fn submit(scheduler: &mut Scheduler<Budget>, s: Sequence<Budget>) {
    s.counters.waiting.fetch_add(1, Ordering::Relaxed);
    scheduler.enqueue(s);
}

/// `(index, tokens, prefill)` of each chunk.
fn shape(plan: &StepPlan) -> Vec<(usize, usize, bool)> {
    plan.chunks
        .iter()
        .map(|c| (c.index, c.tokens, c.prefill))
        .collect()
}

/// Applies a plan as the engine would after a forward pass (no sampling): full blocks
/// join the prefix cache, and a sequence whose pending tokens are done gets token 7.
fn compute(s: &mut Scheduler<Budget>, plan: &StepPlan) {
    for c in &plan.chunks {
        s.running[c.index].table.len += c.tokens;
        s.register_computed(c.index);
        let seq = &mut s.running[c.index];
        if seq.pending() == 0 {
            seq.generated.push(7);
        }
    }
}

/// A stand-in for the KV pool: the token whose keys and values each (block, offset) holds.
type FakeKv = HashMap<(crate::block_pool::BlockId, usize), u32>;

/// What the forward pass of `plan` would write: each chunk's tokens at its positions.
fn write_kv(s: &Scheduler<Budget>, plan: &StepPlan, kv: &mut FakeKv) {
    let bs = s.limits.block_size;
    for c in &plan.chunks {
        let seq = &s.running[c.index];
        for (k, token) in seq.next_tokens(c.tokens).into_iter().enumerate() {
            let p = seq.computed() + k;
            kv.insert((seq.table.blocks[p / bs], p % bs), token);
        }
    }
}

/// Every computed position of every running sequence reads back its own token: a cache hit
/// gave the right contents and no block in use was handed to another writer.
fn check_contents(s: &Scheduler<Budget>, kv: &FakeKv) {
    let bs = s.limits.block_size;
    for seq in &s.running {
        let tokens: Vec<u32> = seq
            .prompt_ids
            .iter()
            .chain(&seq.generated)
            .copied()
            .collect();
        for (p, token) in tokens.iter().enumerate().take(seq.computed()) {
            assert_eq!(
                kv.get(&(seq.table.blocks[p / bs], p % bs)),
                Some(token),
                "sequence {} reads a wrong key/value at position {p}",
                seq.id
            );
        }
    }
}

/// A sequence under the prefix-cache scope `scope` with prompt `prompt`.
fn cached_sequence(id: SequenceId, scope: &str, prompt: Vec<u32>) -> Sequence<Budget> {
    let mut s = sequence(id, prompt.len());
    s.prompt_ids = prompt;
    s.cache_root = Some(crate::block_pool::scope_root(["test", scope]));
    s
}

/// Runs `s` until idle; returns the plans.
fn drain(s: &mut Scheduler<Budget>) -> Vec<StepPlan> {
    let mut plans = Vec::new();
    while !s.is_idle() {
        let plan = s.plan();
        compute_and_finish(s, &plan);
        plans.push(plan);
    }
    plans
}

#[test]
fn a_prompt_that_starts_like_a_cached_one_computes_only_the_rest() {
    let mut s = Scheduler::new(limits(), 64);
    let prompt: Vec<u32> = (10..19).collect();
    s.enqueue(cached_sequence(1, "tenant a", prompt.clone()));
    drain(&mut s);
    assert_eq!(s.allocator.free_count(), 64, "cached blocks count as free");
    // 9 prompt tokens and 8 generated, the last never computed: 8 full blocks of 2.
    assert_eq!(s.allocator.cached_count(), 8);
    // Same first 6 tokens, then different: three blocks found, the rest computed.
    let mut other = prompt[..6].to_vec();
    other.extend([40, 41, 42]);
    s.enqueue(cached_sequence(2, "tenant a", other));
    let plan = s.plan();
    assert_eq!(shape(&plan), vec![(0, 3, true)]);
    assert_eq!(s.running[0].cached_tokens, 6);
    assert_eq!((s.prefix_query_tokens, s.prefix_hit_tokens), (18, 6));
    drain(&mut s);
    // The whole prompt again: every full block but the one holding the last token.
    s.enqueue(cached_sequence(3, "tenant a", prompt.clone()));
    let plan = s.plan();
    assert_eq!(shape(&plan), vec![(0, 1, true)]);
    assert_eq!(s.running[0].cached_tokens, 8);
}

#[test]
fn another_scope_never_finds_the_blocks() {
    let mut s = Scheduler::new(limits(), 64);
    let prompt: Vec<u32> = (10..19).collect();
    s.enqueue(cached_sequence(1, "tenant a", prompt.clone()));
    drain(&mut s);
    s.enqueue(cached_sequence(2, "tenant b", prompt.clone()));
    let plan = s.plan();
    assert_eq!(shape(&plan), vec![(0, 4, true)], "computed from the start");
    assert_eq!(s.running[0].cached_tokens, 0);
    // Blocks of the same tokens under two scopes: both kept, neither shared.
    drain(&mut s);
    assert_eq!(s.allocator.cached_count(), 16);
    // Off for a sequence (no scope): nothing found, nothing registered.
    let mut plain = sequence(3, 9);
    plain.prompt_ids = prompt;
    s.enqueue(plain);
    let plan = s.plan();
    assert_eq!(shape(&plan), vec![(0, 4, true)]);
    drain(&mut s);
    assert_eq!(s.allocator.cached_count(), 16);
}

#[test]
fn a_preempted_sequence_finds_its_own_blocks_again() {
    // 6 blocks of 2: the first sequence's 8-token prompt holds 4, the second needs 3.
    let mut s = Scheduler::new(limits(), 6);
    let mut first = cached_sequence(1, "a", (10..18).collect());
    first.decoding.max_tokens = 2;
    s.enqueue(first);
    let plan = s.plan();
    compute(&mut s, &plan);
    let plan = s.plan();
    compute(&mut s, &plan);
    assert_eq!(s.running[0].computed(), 8);
    let mut second = cached_sequence(2, "a", (50..54).collect());
    second.decoding.max_tokens = 2;
    second.share.priority = Priority::Interactive;
    s.running[0].share.priority = Priority::Batch;
    s.enqueue(second);
    // The interactive newcomer needs its blocks: the batch sequence gives way.
    let mut preempted = false;
    for _ in 0..4 {
        let plan = s.plan();
        preempted |= plan.preempted.contains(&1);
        compute(&mut s, &plan);
        if preempted {
            break;
        }
    }
    assert!(preempted);
    let plans = drain(&mut s);
    let again = plans
        .iter()
        .flat_map(|p| &p.chunks)
        .filter(|c| c.sequence == 1)
        .map(|c| c.tokens)
        .next();
    // Its 9 tokens (the prompt and one generated) but the first three blocks, still
    // cached: its tail block went to the newcomer.
    assert_eq!(again, Some(3), "tokens computed again after the preemption");
}

/// Applies a plan and ends the sequences that reached `max_tokens`; returns their ids.
fn compute_and_finish(s: &mut Scheduler<Budget>, plan: &StepPlan) -> Vec<SequenceId> {
    compute(s, plan);
    let mut done: Vec<usize> = (0..s.running.len())
        .filter(|&i| s.running[i].generated.len() >= s.running[i].decoding.max_tokens)
        .collect();
    done.sort_unstable_by(|a, b| b.cmp(a));
    done.into_iter().map(|i| s.finish(i).id).collect()
}

fn running_of(s: &Scheduler<Budget>, tenant: &str) -> usize {
    s.running
        .iter()
        .filter(|q| q.tenant.as_str() == tenant)
        .count()
}

#[test]
fn choices_of_one_prompt_wait_for_it_and_share_its_full_blocks() {
    let mut s = Scheduler::new(limits(), 64);
    // A 7-token prompt over blocks of 2: three full blocks to share, the 7th token each
    // choice computes itself.
    s.enqueue(sequence(1, 7));
    for id in [2, 3] {
        let mut choice = sequence(id, 7);
        choice.fork_of = Some(1);
        s.enqueue(choice);
    }
    // While the first computes the prompt (chunks of 4), the others wait.
    let plan = s.plan();
    assert_eq!(plan.admitted, vec![1]);
    compute(&mut s, &plan);
    let plan = s.plan();
    assert_eq!(plan.admitted, Vec::<SequenceId>::new());
    compute(&mut s, &plan);
    // The prompt is done: both others are admitted, each computing one token.
    let plan = s.plan();
    assert_eq!(plan.admitted, vec![2, 3]);
    assert_eq!(shape(&plan)[1..], [(1, 1, true), (2, 1, true)]);
    let parent = s.running[0].table.blocks.clone();
    for child in &s.running[1..] {
        assert_eq!(child.table.blocks[..3], parent[..3]);
        assert_ne!(
            child.table.blocks[3], parent[3],
            "the partial block is each one's own"
        );
    }
    assert_eq!(s.allocator.holders(parent[0]), 3);
    // Four blocks for the first, one more for each other: 6 held, not 12.
    let held: std::collections::HashSet<_> = s
        .running
        .iter()
        .flat_map(|q| q.table.blocks.clone())
        .collect();
    assert_eq!(held.len(), 6);
    assert_eq!(s.allocator.free_count(), 64 - 6);
    compute(&mut s, &plan);
    // Ending them in any order returns every block once.
    for i in [0, 0, 0] {
        s.finish(i);
    }
    assert_eq!(s.allocator.free_count(), 64);
}

#[test]
fn long_prompts_are_chunked_and_decodes_come_first() {
    let mut s = Scheduler::new(limits(), 64);
    s.enqueue(sequence(1, 2));
    let plan = s.plan();
    assert_eq!(shape(&plan), vec![(0, 2, true)]);
    compute(&mut s, &plan);
    s.enqueue(sequence(2, 10));
    let plan = s.plan();
    // Sequence<Budget> 1 decodes (1 token), sequence 2 gets a chunk of 4 (prefill_chunk).
    assert_eq!(shape(&plan), vec![(0, 1, false), (1, 4, true)]);
    compute(&mut s, &plan);
    let plan = s.plan();
    assert_eq!(plan.chunks[0].tokens, 1);
    assert_eq!(plan.chunks[1].tokens, 4);
}

#[test]
fn the_token_budget_limits_a_step() {
    let mut s = Scheduler::new(
        SchedulerLimits {
            max_batch_tokens: 5,
            ..limits()
        },
        64,
    );
    for id in 0..3 {
        s.enqueue(sequence(id, 4));
    }
    let plan = s.plan();
    let total: usize = plan.chunks.iter().map(|c| c.tokens).sum();
    assert_eq!(total, 5);
    assert_eq!(plan.admitted, vec![0, 1]);
}

#[test]
fn out_of_blocks_preempts_the_youngest_and_frees_its_blocks() {
    // 6 blocks of 2 positions.
    let mut s = Scheduler::new(limits(), 6);
    s.enqueue(sequence(1, 4));
    s.enqueue(sequence(2, 2));
    let plan = s.plan();
    assert_eq!(plan.admitted, vec![1, 2]);
    compute(&mut s, &plan);
    assert_eq!(s.allocator.free_count(), 3);
    // Decode until sequence 1 can no longer grow without taking sequence 2's blocks.
    let mut preempted = Vec::new();
    for _ in 0..6 {
        let plan = s.plan();
        preempted.extend(plan.preempted.iter().copied());
        compute(&mut s, &plan);
    }
    assert_eq!(
        preempted.first(),
        Some(&2),
        "the most recently admitted goes first"
    );
    let held: usize = s.running.iter().map(|q| q.table.blocks.len()).sum();
    assert_eq!(
        held + s.allocator.free_count(),
        6,
        "no block leaks through preemption"
    );
    let requeued = s
        .waiting
        .iter()
        .find(|q| q.id == 2)
        .map(|q| (q.preemptions, q.table.len));
    if let Some((times, len)) = requeued {
        assert!(times >= 1);
        assert_eq!(len, 0, "a preempted sequence recomputes from scratch");
    }
}

#[test]
fn admission_waits_for_blocks() {
    let mut s = Scheduler::new(limits(), 3);
    s.enqueue(sequence(1, 6)); // needs all 3 blocks
    s.enqueue(sequence(2, 2));
    let plan = s.plan();
    assert_eq!(plan.admitted, vec![1]);
    assert_eq!(s.waiting.len(), 1);
}

/// Tenant `noisy` fills every slot and keeps a backlog; returns the scheduler after a few
/// steps, and the receivers that keep its sequences alive.
fn flooded(
    limits: SchedulerLimits,
    share: Share,
) -> (Scheduler<Budget>, Vec<UnboundedReceiver<TokenEvent>>) {
    let mut s = Scheduler::new(limits, 256);
    let mut keep = Vec::new();
    for id in 0..12 {
        let (q, rx) = sequence_of(id, "noisy", share, 3, 40);
        keep.push(rx);
        submit(&mut s, q);
    }
    for _ in 0..4 {
        let plan = s.plan();
        compute(&mut s, &plan);
    }
    assert_eq!(running_of(&s, "noisy"), 4, "the neighbour fills the batch");
    (s, keep)
}

/// [`flooded`] by a `batch`-class tenant, with one batch token per step beside interactive
/// work.
fn flooded_by_batch() -> (Scheduler<Budget>, Vec<UnboundedReceiver<TokenEvent>>) {
    let batch = Share {
        priority: Priority::Batch,
        ..Share::default()
    };
    let limits = SchedulerLimits {
        lower_class_step_tokens: Some(1),
        ..limits()
    };
    flooded(limits, batch)
}

#[test]
fn a_quiet_arrival_gets_a_slot_in_the_next_step_and_slots_do_not_flap() {
    let (mut s, _keep) = flooded(limits(), Share::default());
    let (quiet, _rx) = sequence_of(100, "quiet", Share::default(), 3, 40);
    submit(&mut s, quiet);
    let plan = s.plan();
    assert!(
        plan.admitted.contains(&100),
        "admitted at the first step after arriving"
    );
    assert_eq!(
        plan.preempted.len(),
        1,
        "one neighbour's sequence made room"
    );
    let victim = plan.preempted[0];
    assert!(
        s.running
            .iter()
            .filter(|q| q.tenant.as_str() == "noisy")
            .all(|q| q.admission < s.running.iter().find(|q| q.id == 100).unwrap().admission),
        "the victim was the neighbour's youngest"
    );
    assert!(plan.chunks.iter().any(|c| c.sequence == 100 && c.prefill));
    compute(&mut s, &plan);
    // The victim waits at the front of the queue and the slots settle: no preemption back
    // and forth while both tenants are busy.
    assert_eq!(s.waiting.front().map(|q| q.id), Some(victim));
    for _ in 0..30 {
        let plan = s.plan();
        assert!(
            plan.preempted.is_empty(),
            "slots flapped: {:?}",
            plan.preempted
        );
        compute(&mut s, &plan);
    }
    assert_eq!(running_of(&s, "quiet"), 1);
}

#[test]
fn preemption_for_fairness_needs_the_other_tenant_to_hold_more_slots() {
    // Two tenants with two slots each: a third arrival of either takes nothing.
    let mut s = Scheduler::new(limits(), 256);
    let mut keep = Vec::new();
    for id in 0..8 {
        let tenant = if id % 2 == 0 { "a" } else { "b" };
        let (q, rx) = sequence_of(id, tenant, Share::default(), 3, 40);
        keep.push(rx);
        submit(&mut s, q);
    }
    for _ in 0..20 {
        let plan = s.plan();
        assert!(plan.preempted.is_empty());
        compute(&mut s, &plan);
    }
    assert_eq!((running_of(&s, "a"), running_of(&s, "b")), (2, 2));
}

#[test]
fn weights_set_the_slot_split_that_preemption_restores() {
    // `heavy` (weight 3) holds every slot; `light` (weight 1) arrives with a backlog: one
    // slot changes hands, as 3:1 asks, and no more.
    let heavy = Share {
        weight: 3.0,
        ..Share::default()
    };
    let (mut s, _keep) = flooded(limits(), heavy);
    let mut keep = Vec::new();
    for id in 100..104 {
        let (q, rx) = sequence_of(id, "light", Share::default(), 3, 40);
        keep.push(rx);
        submit(&mut s, q);
    }
    let mut preempted = 0;
    for _ in 0..10 {
        let plan = s.plan();
        preempted += plan.preempted.len();
        compute(&mut s, &plan);
    }
    assert_eq!(preempted, 1);
    assert_eq!((running_of(&s, "noisy"), running_of(&s, "light")), (3, 1));
}

#[test]
fn projects_split_their_tenants_share_by_weight_and_leave_the_others_alone() {
    // Tenant `lab` has two backlogged projects, weights 1 and 3; tenant `other` (no projects)
    // is as backlogged. Over many short sequences, `lab` and `other` are served alike, and
    // `lab`'s service splits 1:3 between its projects.
    let project = |name: &str, weight: f64| policies::ProjectShare {
        label: "lab".parse::<policies::TenantId>().unwrap().scope(name),
        weight,
    };
    let mut s = Scheduler::new(limits(), 256);
    let mut keep = Vec::new();
    let mut next_id = 0;
    let mut labels = HashMap::new();
    for _ in 0..60 {
        for (tenant, group) in [
            ("lab", Some(project("genomics", 1.0))),
            ("lab", Some(project("imaging", 3.0))),
            ("other", None),
        ] {
            let (mut q, rx) = sequence_of(next_id, tenant, Share::default(), 2, 2);
            let label = group
                .as_ref()
                .map_or(tenant.to_string(), |g| g.label.to_string());
            labels.insert(next_id, label);
            q.project_share = group;
            keep.push(rx);
            submit(&mut s, q);
            next_id += 1;
        }
    }
    let mut served: HashMap<String, usize> = HashMap::new();
    // 40 steps of at most 8 tokens: far less than the backlogs, which stay backlogged.
    for _ in 0..40 {
        let plan = s.plan();
        for c in &plan.chunks {
            *served
                .entry(labels[&s.running[c.index].id].clone())
                .or_default() += c.tokens;
        }
        compute_and_finish(&mut s, &plan);
    }
    let of = |label: &str| served.get(label).copied().unwrap_or(0) as f64;
    let (genomics, imaging, other) = (of("lab/genomics"), of("lab/imaging"), of("other"));
    let lab = genomics + imaging;
    assert!(
        (lab / other - 1.0).abs() < 0.15,
        "lab {lab} vs other {other}"
    );
    assert!(
        (imaging / genomics - 3.0).abs() < 0.5,
        "imaging {imaging} vs genomics {genomics}"
    );
}

#[test]
fn a_higher_class_is_admitted_first_and_keeps_its_steps_short() {
    let (mut s, _keep) = flooded_by_batch();
    // The batch tenant is far less served than the newcomer will be, yet the interactive
    // request goes first: classes before fair share.
    let (urgent, _rx) = sequence_of(100, "clinic", Share::default(), 3, 6);
    submit(&mut s, urgent);
    let plan = s.plan();
    assert!(plan.admitted.contains(&100));
    assert_eq!(plan.preempted.len(), 1, "a batch sequence gave its slot");
    let mut steps_with_urgent = 0;
    let mut done = false;
    while !done {
        let plan = s.plan();
        let urgent_runs = plan.chunks.iter().any(|c| c.sequence == 100);
        let batch_tokens: usize = plan
            .chunks
            .iter()
            .filter(|c| c.tenant.as_str() == "noisy")
            .map(|c| c.tokens)
            .sum();
        if urgent_runs {
            steps_with_urgent += 1;
            assert!(
                batch_tokens <= 1,
                "batch took {batch_tokens} tokens beside interactive"
            );
        }
        done = compute_and_finish(&mut s, &plan).contains(&100);
    }
    assert!(steps_with_urgent >= 5);
    // With the interactive work gone, batch fills the step again.
    let plan = s.plan();
    assert!(plan.chunks.iter().map(|c| c.tokens).sum::<usize>() > 1);
    // And a batch sequence never preempts an interactive one.
    let (late, _rx2) = sequence_of(101, "clinic", Share::default(), 3, 40);
    submit(&mut s, late);
    let plan = s.plan();
    compute(&mut s, &plan);
    for _ in 0..20 {
        let plan = s.plan();
        assert!(!plan.preempted.contains(&101));
        compute(&mut s, &plan);
    }
}

#[test]
fn an_urgent_step_admits_only_a_higher_class_that_fits_and_leaves_the_batch_alone() {
    // Batch work holds 3 of 4 slots; its step is in flight.
    let batch = Share {
        priority: Priority::Batch,
        ..Share::default()
    };
    let mut s = Scheduler::new(limits(), 256);
    let mut keep = Vec::new();
    for id in 0..3 {
        let (q, rx) = sequence_of(id, "bulk", batch, 3, 40);
        keep.push(rx);
        submit(&mut s, q);
    }
    let (late_batch, rx) = sequence_of(50, "bulk", batch, 3, 40);
    keep.push(rx);
    let in_flight = s.plan();
    compute(&mut s, &in_flight);
    let in_flight = s.plan();
    let paused_len = s.running.len();
    let before: Vec<(SequenceId, usize, usize)> = s
        .running
        .iter()
        .map(|q| (q.id, q.table.len, q.table.blocks.len()))
        .collect();
    // Nothing above batch waits: no urgent step, even with a batch arrival.
    submit(&mut s, late_batch);
    assert!(!s.waits_above(Priority::Batch));
    assert!(s.plan_beside(Priority::Batch, paused_len).chunks.is_empty());
    // Two interactive arrivals: one fits in the free slot and runs its whole prompt now;
    // the other would need a preemption and waits for the next ordinary step.
    let (a, _ra) = sequence_of(100, "clinic", Share::default(), 3, 6);
    let (b, _rb) = sequence_of(101, "lab", Share::default(), 3, 6);
    submit(&mut s, a);
    submit(&mut s, b);
    assert!(s.waits_above(Priority::Batch));
    assert!(
        s.plan_beside(Priority::Interactive, paused_len)
            .chunks
            .is_empty(),
        "nothing cuts into an interactive step"
    );
    let urgent = s.plan_beside(Priority::Batch, paused_len);
    assert_eq!(urgent.admitted.len(), 1);
    assert!(urgent.preempted.is_empty());
    assert_eq!(shape(&urgent), vec![(3, 3, true)]);
    // The paused step's sequences, indices and blocks are as they were.
    for (i, (id, len, blocks)) in before.iter().enumerate() {
        let q = &s.running[i];
        assert_eq!(
            (q.id, q.table.len, q.table.blocks.len()),
            (*id, *len, *blocks)
        );
    }
    assert!(in_flight
        .chunks
        .iter()
        .all(|c| s.running[c.index].id == c.sequence));
    // While the step stays paused, the newcomer keeps decoding; no one else gets in.
    compute(&mut s, &urgent);
    let next_token = s.plan_beside(Priority::Batch, paused_len);
    assert_eq!(
        shape(&next_token),
        vec![(3, 1, false)],
        "no slot left for the other"
    );
    compute(&mut s, &next_token);
    // The ordinary step after it gives the other interactive request a batch slot.
    compute(&mut s, &in_flight);
    let next = s.plan();
    assert_eq!(next.admitted.len(), 1);
    assert_eq!(next.preempted.len(), 1);
}

#[test]
fn batch_work_leaves_the_reserved_slot_to_an_interactive_arrival() {
    let limits = SchedulerLimits {
        reserved_interactive_slots: 1,
        ..limits()
    };
    let batch = Share {
        priority: Priority::Batch,
        ..Share::default()
    };
    let mut s = Scheduler::new(limits, 256);
    let mut keep = Vec::new();
    for id in 0..12 {
        let (q, rx) = sequence_of(id, "bulk", batch, 3, 40);
        keep.push(rx);
        submit(&mut s, q);
    }
    for _ in 0..6 {
        let plan = s.plan();
        compute(&mut s, &plan);
    }
    assert_eq!(
        running_of(&s, "bulk"),
        3,
        "batch keeps off the reserved slot"
    );
    let (clinic, _rx) = sequence_of(100, "clinic", Share::default(), 3, 6);
    submit(&mut s, clinic);
    let paused_len = s.running.len();
    let urgent = s.plan_beside(Priority::Batch, paused_len);
    assert_eq!(urgent.admitted, vec![100]);
    assert!(urgent.preempted.is_empty());
}

#[test]
fn batch_decodes_take_turns_when_their_step_share_is_small() {
    let (mut s, _keep) = flooded_by_batch();
    let (urgent, _rx) = sequence_of(100, "clinic", Share::default(), 3, 40);
    submit(&mut s, urgent);
    let mut served: HashMap<SequenceId, usize> = HashMap::new();
    for _ in 0..12 {
        let plan = s.plan();
        for c in plan.chunks.iter().filter(|c| c.tenant.as_str() == "noisy") {
            *served.entry(c.sequence).or_default() += 1;
        }
        compute(&mut s, &plan);
    }
    let running_batch: Vec<SequenceId> = s
        .running
        .iter()
        .filter(|q| q.tenant.as_str() == "noisy")
        .map(|q| q.id)
        .collect();
    assert_eq!(running_batch.len(), 3);
    for id in running_batch {
        assert!(
            served.get(&id).copied().unwrap_or(0) >= 3,
            "{id} starved: {served:?}"
        );
    }
}

#[test]
fn caps_bound_what_one_tenant_holds() {
    let capped = Share {
        max_running_share: Some(0.5),
        max_kv_share: Some(0.25),
        ..Share::default()
    };
    let mut s = Scheduler::new(limits(), 32); // KV cap: 8 blocks
    let mut keep = Vec::new();
    for id in 0..6 {
        let (q, rx) = sequence_of(id, "capped", capped, 3, 12);
        keep.push(rx);
        submit(&mut s, q);
    }
    let mut preempted = 0;
    for _ in 0..40 {
        let plan = s.plan();
        preempted += plan.preempted.len();
        let (n, blocks) = s.held_by(&"capped".parse().unwrap());
        assert!(n <= 2, "{n} running, cap 2");
        assert!(n < 2 || blocks <= 8, "{blocks} blocks, cap 8");
        compute_and_finish(&mut s, &plan);
    }
    assert!(
        preempted > 0,
        "growth past the KV cap preempted the tenant's own youngest"
    );
    // A tenant alone at its cap still leaves the rest for others.
    let (other, _rx) = sequence_of(100, "other", Share::default(), 3, 4);
    submit(&mut s, other);
    let plan = s.plan();
    assert!(plan.admitted.contains(&100) || running_of(&s, "other") == 1);
}

#[derive(Debug, Clone)]
enum Op {
    /// Submit: (tenant 0-2, batch class, prompt length, max tokens, prompt variant).
    Submit(usize, bool, usize, usize, u32),
    /// Drop the receiver of the `i % live`-th sequence (its client leaves).
    Cancel(usize),
    /// Plan and compute this many steps.
    Steps(usize),
    /// Plan a step, and before computing it run an urgent step (as while it is paused).
    Paused,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..3, any::<bool>(), 1usize..12, 1usize..10, 0u32..3)
            .prop_map(|(t, b, p, m, v)| Op::Submit(t, b, p, m, v)),
        any::<usize>().prop_map(Op::Cancel),
        (1usize..4).prop_map(Op::Steps),
        Just(Op::Paused),
    ]
}

/// Every block is free or held by exactly one running sequence; no sequence is both
/// running and waiting; the tenants' gauges match the queues.
fn check_invariants(
    s: &Scheduler<Budget>,
    total: usize,
    tenants: &[Arc<engine_api::TenantCounters>],
) {
    // Blocks are shared (prefix cache): each one's holders are the sequences holding it.
    let mut holders: HashMap<crate::block_pool::BlockId, u32> = HashMap::new();
    for b in s.running.iter().flat_map(|q| q.table.blocks.iter()) {
        *holders.entry(*b).or_default() += 1;
    }
    for (b, n) in &holders {
        assert_eq!(s.allocator.holders(*b), *n, "holders of block {b}");
    }
    assert_eq!(
        holders.len() + s.allocator.free_count(),
        total,
        "a block leaked"
    );
    assert!(s.running.len() <= s.limits.max_running);
    assert!(
        s.waiting.iter().all(|q| q.table.blocks.is_empty()),
        "a waiting sequence holds blocks"
    );
    let ids: HashSet<_> = s.running.iter().chain(&s.waiting).map(|q| q.id).collect();
    assert_eq!(
        ids.len(),
        s.running.len() + s.waiting.len(),
        "a sequence is in two places"
    );
    for (t, counters) in tenants.iter().enumerate() {
        let name = format!("t{t}");
        let waiting = s
            .waiting
            .iter()
            .filter(|q| q.tenant.as_str() == name)
            .count();
        assert_eq!(
            counters.waiting.load(Ordering::Relaxed) as usize,
            waiting,
            "{name} waiting"
        );
        assert_eq!(
            counters.running.load(Ordering::Relaxed) as usize,
            running_of(s, &name),
            "{name} running"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)))]
    #[test]
    fn no_slot_or_block_leaks_across_preemption_and_cancellation(
        blocks in 4usize..24,
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let mut s = Scheduler::new(
            SchedulerLimits {
                lower_class_step_tokens: Some(1),
                reserved_interactive_slots: 1,
                ..limits()
            },
            blocks,
        );
        let tenants: Vec<Arc<engine_api::TenantCounters>> =
            (0..3).map(|_| Arc::default()).collect();
        let mut receivers: Vec<(SequenceId, UnboundedReceiver<TokenEvent>)> = Vec::new();
        let mut next_id = 0;
        let mut kv = FakeKv::new();
        for op in ops {
            match op {
                Op::Submit(t, batch, prompt, max_tokens, variant) => {
                    // Never more than the pool can hold, as the engine checks at submission.
                    if blocks_for(prompt + max_tokens, 2) > blocks { continue; }
                    let share = Share {
                        priority: if batch { Priority::Batch } else { Priority::Interactive },
                        max_running_share: (t == 2).then_some(0.5),
                        max_kv_share: (t == 2).then_some(0.5),
                        weight: 1.0 + t as f64,
                        ..Share::default()
                    };
                    let (mut q, rx) = sequence_of(next_id, &format!("t{t}"), share, prompt, max_tokens);
                    q.counters = tenants[t].clone();
                    // Prompts start alike and differ after half; t0 and t1 share a
                    // prefix-cache scope, t2 has its own.
                    q.prompt_ids = (0..prompt as u32).map(|i| if 2 * i < prompt as u32 { 1 } else { 2 + variant }).collect();
                    let scope = if t == 2 { "t2" } else { "group" };
                    q.cache_root = Some(crate::block_pool::scope_root(["test", scope]));
                    receivers.push((next_id, rx));
                    next_id += 1;
                    submit(&mut s, q);
                }
                Op::Cancel(i) if !receivers.is_empty() => {
                    let i = i % receivers.len();
                    drop(receivers.swap_remove(i));
                    s.remove_cancelled();
                }
                Op::Cancel(_) => {}
                Op::Paused => {
                    s.remove_cancelled();
                    let plan = s.plan();
                    let in_flight: Vec<(SequenceId, Vec<u32>)> = plan
                        .chunks
                        .iter()
                        .map(|c| (s.running[c.index].id, s.running[c.index].table.blocks.clone()))
                        .collect();
                    let top = plan.chunks.iter().map(|c| s.running[c.index].share.priority).max();
                    if let Some(top) = top {
                        // Two pauses in the step: admissions, then their next tokens.
                        let paused_len = s.running.len();
                        for _ in 0..2 {
                            let urgent = s.plan_beside(top, paused_len);
                            prop_assert!(urgent.preempted.is_empty());
                            write_kv(&s, &urgent, &mut kv);
                            compute_and_finish(&mut s, &urgent);
                        }
                    }
                    // The paused step's sequences, at its indices, with the same blocks.
                    for (c, (id, blocks)) in plan.chunks.iter().zip(&in_flight) {
                        prop_assert_eq!(s.running[c.index].id, *id);
                        prop_assert_eq!(&s.running[c.index].table.blocks, blocks);
                    }
                    write_kv(&s, &plan, &mut kv);
                    compute_and_finish(&mut s, &plan);
                    check_invariants(&s, blocks, &tenants);
                    check_contents(&s, &kv);
                }
                Op::Steps(n) => {
                    for _ in 0..n {
                        s.remove_cancelled();
                        let plan = s.plan();
                        check_contents(&s, &kv);
                        write_kv(&s, &plan, &mut kv);
                        compute_and_finish(&mut s, &plan);
                        check_invariants(&s, blocks, &tenants);
                        check_contents(&s, &kv);
                    }
                }
            }
            check_invariants(&s, blocks, &tenants);
        }
        // Drain: everything submitted ends, and every block comes back.
        let mut steps = 0;
        while !s.is_idle() {
            s.remove_cancelled();
            let plan = s.plan();
            check_contents(&s, &kv);
            write_kv(&s, &plan, &mut kv);
            compute_and_finish(&mut s, &plan);
            check_invariants(&s, blocks, &tenants);
            check_contents(&s, &kv);
            steps += 1;
            prop_assert!(steps < 5000, "the queue never drained: {} waiting", s.waiting.len());
        }
        prop_assert_eq!(s.allocator.free_count(), blocks);
    }
}
