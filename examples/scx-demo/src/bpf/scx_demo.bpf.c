/* SPDX-License-Identifier: GPL-2.0 */
/*
 * scx_demo: a small FIFO sched_ext scheduler with fault-injection knobs.
 *
 * Policy: runnable tasks go to a FIFO dispatch queue (DSQ) per LLC (one DSQ
 * for the whole machine unless userspace maps CPUs to several LLCs). A CPU
 * that needs work consumes its own LLC's DSQ and, with `steal`, the other
 * LLCs' DSQs. Wakeups that find an idle CPU are dispatched straight to that
 * CPU's local DSQ; other enqueues kick an idle CPU that can reach the queue.
 *
 * Faults (all off unless userspace sets the rodata knobs before load):
 *  - stall:  after stall_after_ns one victim task is parked in a DSQ nobody
 *            consumes, so the kernel watchdog ejects the scheduler. With
 *            stall_cpu, every task queued on that CPU is parked instead and
 *            the CPU dispatches nothing: it idles with runnable tasks.
 *  - crash:  after crash_after_ns, scx_bpf_error() from tick/dispatch.
 *  - pile:   every task that may run on pile_cpu queues in that CPU's local
 *            DSQ: one CPU runs everything, the others idle.
 *  - degrade: tasks of one cgroup get a tiny slice and are consumed only on
 *            every DEGRADE_EVERY-th dispatch (or when nothing else waits).
 *  - slow:   every wakeup of a user task waits at least slow_ns in a queue
 *            ordered by release time before it may run. Kernel threads are
 *            never delayed, so the fault shows as wake latency rather than
 *            as a stall of the kernel's own workers (sched_ext's watchdog
 *            runs in one). No CPU busy-waits: the delay is queueing.
 *  - fail_verify: makes a reachable out-of-bounds map access, which the
 *            verifier rejects at load time.
 *
 * The GPL license string is required: sched_ext kfuncs are GPL-only.
 */
#include "kernel_defs.h"

char _license[] SEC("license") = "GPL";

#define MAX_CPUS 1024 /* power of two: used as a mask */
#define MAX_LLCS 64
/* DSQ ids 0..MAX_LLCS-1 are the per-LLC queues. */
#define STALL_DSQ 0x1000
#define DEGRADE_DSQ 0x1001
/* Delayed wakeups, ordered by the time they may run (dsq_vtime). */
#define SLOW_DSQ 0x1002
/* How often the slow fault's timer looks for due wakeups on idle CPUs. */
#define SLOW_POLL_NS 1000000ULL
#define DEGRADE_EVERY 8

#define BPF_STRUCT_OPS(name, args...) \
	SEC("struct_ops/" #name) BPF_PROG(name, ##args)
#define BPF_STRUCT_OPS_SLEEPABLE(name, args...) \
	SEC("struct_ops.s/" #name) BPF_PROG(name, ##args)

/*
 * scx_bpf_error() with printf-style arguments. The kfunc takes the format
 * and a u64 array of arguments; always pass at least one argument so the
 * array is never zero-sized.
 */
#define demo_error(fmt, args...)                                           \
	({                                                                 \
		static char ___fmt[] = fmt;                                \
		unsigned long long ___param[] = { args };                  \
		scx_bpf_error_bstr(___fmt, ___param, sizeof(___param));    \
	})

#define barrier() asm volatile("" ::: "memory")

/* ---- knobs: set by userspace in .rodata before load ---- */
const volatile u64 slice_ns = 5000000;
const volatile u64 degrade_slice_ns = 500000;
const volatile u32 nr_llcs = 1;
const volatile bool steal;
/* CPU -> dense LLC index (0..nr_llcs-1). */
const volatile u32 cpu_llc[MAX_CPUS];
/* 0 = fault disabled. */
const volatile u64 stall_after_ns;
/* Stall only this tgid; 0 = the first eligible task enqueued after the deadline. */
const volatile s32 stall_tgid;
/* CPU stall fault: once armed, this CPU runs nothing (-1: off); tasks woken
 * elsewhere are steered to stall_cpu_alt instead of it. */
const volatile s32 stall_cpu = -1;
const volatile s32 stall_cpu_alt;
/* Pile fault: user tasks that may run on this CPU all queue in its local DSQ
 * (-1: off), so it runs them all while the other CPUs idle. */
const volatile s32 pile_cpu = -1;
const volatile u64 crash_after_ns;
const volatile bool degrade;
/* cgroup id (cgroup2 inode number) to degrade; 0 = the highest id seen. */
const volatile u64 degrade_cgid;
const volatile u64 slow_ns;
const volatile bool fail_verify;
/* The loader's own tgid: never chosen as a victim, so it can report. */
const volatile s32 self_tgid;

/* ---- exit record: filled by ops.exit, read by userspace ---- */

/** Copy of the kernel's struct scx_exit_info, readable from userspace. */
struct demo_exit_info {
	/* enum scx_exit_kind; written last, so non-zero means complete. */
	s32 kind;
	s64 exit_code;
	char reason[128];
	char msg[SCX_EXIT_MSG_LEN];
};

struct demo_exit_info uei;

/* sched_ext's debug dump of an error exit (text, NUL-terminated, possibly cut). */
#define DEMO_DUMP_LEN 16384
char uei_dump[DEMO_DUMP_LEN];

/* ---- state and counters (bss) ---- */
u64 start_ns;
/* pid parked in STALL_DSQ (0 = none yet); 64-bit for the BPF v1 atomics. */
s64 stall_victim;
/* Highest cgroup id seen at enqueue, the default degrade target. */
u64 max_cgid;
u64 nr_enqueued, nr_direct, nr_dispatch, nr_stolen, nr_stalled,
	nr_degraded, nr_degraded_run, nr_kicked, nr_slowed;
/* Written only by the --fail-verify branch. */
u64 verify_sink;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u64);
} demo_scratch SEC(".maps");

/* The slow fault's poll timer (armed in init only when slow_ns is set). */
struct slow_timer {
	struct bpf_timer timer;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct slow_timer);
} demo_slow_timer SEC(".maps");

static u32 cpu_to_llc(s32 cpu)
{
	u32 idx = cpu, llc;

	/*
	 * Unsigned compare plus mask: clang may re-derive the index from cpu
	 * after a signed check, which the verifier cannot follow.
	 */
	if (idx >= MAX_CPUS)
		return 0;
	llc = cpu_llc[idx & (MAX_CPUS - 1)];
	return llc < nr_llcs ? llc : 0;
}

static u64 task_cgid(struct task_struct *p)
{
	/* Direct BTF pointer walk; a NULL link reads as 0. */
	return p->cgroups->dfl_cgrp->kn->id;
}

static bool is_kthread(struct task_struct *p)
{
	return p->flags & PF_KTHREAD;
}

/*
 * With stall_on_trigger, the stall starts when something outside the scheduler
 * sets this non-zero: ktstr's host-side bpf_map_write, through guest memory.
 * Its own section makes it offset 0 of its own map, named ".data.trig"
 * (libbpf names a map after a section with a second dot by the section alone),
 * whatever else the object keeps in .bss.
 */
volatile u32 stall_trigger SEC(".data.trig");
const volatile bool stall_on_trigger;

static bool stall_armed(void)
{
	if (stall_on_trigger)
		return stall_trigger != 0;
	return stall_after_ns &&
	       bpf_ktime_get_ns() - start_ns >= stall_after_ns;
}

/* Whether @cpu is the stalled CPU and the stall has begun. */
static bool cpu_stalled(s32 cpu)
{
	return stall_cpu >= 0 && cpu == stall_cpu && stall_armed();
}

/* Decides (once the deadline has passed) whether @p is the stall victim. */
static bool is_stall_victim(struct task_struct *p)
{
	s64 victim;

	if (stall_cpu >= 0)
		/* Everything but ourselves that is queued on the stalled CPU,
		 * kernel threads included, so nothing runs there. */
		return p->tgid != self_tgid && cpu_stalled(scx_bpf_task_cpu(p));
	if (!stall_armed() || is_kthread(p) || p->tgid == self_tgid)
		return false;
	if (stall_tgid)
		return p->tgid == stall_tgid;
	victim = stall_victim;
	if (!victim) {
		/* First eligible task after the deadline becomes the victim. */
		__sync_val_compare_and_swap(&stall_victim, 0, p->pid);
		victim = stall_victim;
	}
	return p->pid == victim;
}

static bool is_degraded(struct task_struct *p)
{
	u64 target;

	if (!degrade || is_kthread(p))
		return false;
	target = degrade_cgid ? degrade_cgid : max_cgid;
	return task_cgid(p) == target;
}

static void maybe_crash(void)
{
	u64 elapsed;

	if (!crash_after_ns)
		return;
	elapsed = bpf_ktime_get_ns() - start_ns;
	if (elapsed >= crash_after_ns)
		demo_error("scx_demo: injected crash after %llu ms",
			   elapsed / 1000000);
}

/*
 * Whether the pile fault sends @p to pile_cpu's local DSQ: everything but
 * ourselves that may run there, kernel threads included. (A kthread bound to
 * pile_cpu left in the shared queue never ran: the CPU always had local work,
 * and sched_ext's watchdog ejected the scheduler for starving ksoftirqd/0.)
 */
static bool is_piled(struct task_struct *p)
{
	return pile_cpu >= 0 && p->tgid != self_tgid &&
	       bpf_cpumask_test_cpu(pile_cpu, p->cpus_ptr);
}

/* A wakeup of a user task the slow fault delays. */
static bool is_slowed(struct task_struct *p, u64 enq_flags)
{
	return slow_ns && (enq_flags & SCX_ENQ_WAKEUP) && !is_kthread(p) &&
	       p->tgid != self_tgid;
}

/*
 * Moves the delayed wakeups whose time has come, and that may run on this
 * CPU, to its local DSQ. A task pinned elsewhere waits for one of its own
 * CPUs: moving it here is a runtime error in Linux 6.12 ("SCX_DSQ_LOCAL[_ON]
 * target CPU not allowed"), which a pinned cyclictest thread hit. Returns
 * whether one was moved. The queue is ordered by release time, so the first
 * one not yet due ends the walk.
 */
static bool release_slowed(void)
{
	struct task_struct *p;
	u64 now = bpf_ktime_get_ns();
	s32 this_cpu = bpf_get_smp_processor_id();

	bpf_for_each(scx_dsq, p, SLOW_DSQ, 0) {
		if (p->scx.dsq_vtime > now)
			break;
		if (!bpf_cpumask_test_cpu(this_cpu, p->cpus_ptr))
			continue;
		if (scx_bpf_dispatch_from_dsq(BPF_FOR_EACH_ITER, p,
					      SCX_DSQ_LOCAL, 0))
			return true;
	}
	return false;
}

/*
 * Idle CPUs do not run ops.dispatch on their own, so while delayed wakeups
 * wait, wake an idle CPU for each one that is due, among the CPUs it may run
 * on (only those can release it: a task pinned to an idle CPU would wait
 * forever while the kick went elsewhere).
 */
static int slow_timer_fn(void *map, int *key, struct bpf_timer *timer)
{
	struct task_struct *p;
	u64 now = bpf_ktime_get_ns();
	s32 cpu;

	/* Outside ops callbacks the DSQ iterator needs an RCU read section. */
	bpf_rcu_read_lock();
	bpf_for_each(scx_dsq, p, SLOW_DSQ, 0) {
		if (p->scx.dsq_vtime > now)
			break;
		cpu = scx_bpf_pick_idle_cpu(p->cpus_ptr, 0);
		if (cpu >= 0)
			scx_bpf_kick_cpu(cpu, SCX_KICK_IDLE);
	}
	bpf_rcu_read_unlock();
	bpf_timer_start(timer, SLOW_POLL_NS, 0);
	return 0;
}

/*
 * Idle CPUs only run ops.dispatch when something wakes them, so a task queued
 * behind a busy CPU (e.g. after its slice ran out) would wait while another
 * CPU idles. Wake one idle CPU the task may run on, where that CPU can reach
 * the task's queue: with one queue, or with stealing. (Without stealing an
 * idle CPU of another LLC could not take it.)
 */
static void kick_idle(struct task_struct *p)
{
	s32 cpu;

	if (nr_llcs > 1 && !steal)
		return;
	cpu = scx_bpf_pick_idle_cpu(p->cpus_ptr, 0);
	/* A kick would wake the stalled CPU and move its runqueue clock. */
	if (cpu >= 0 && !cpu_stalled(cpu)) {
		__sync_fetch_and_add(&nr_kicked, 1);
		scx_bpf_kick_cpu(cpu, SCX_KICK_IDLE);
	}
}

s32 BPF_STRUCT_OPS(demo_select_cpu, struct task_struct *p, s32 prev_cpu,
		   u64 wake_flags)
{
	bool is_idle = false;
	s32 cpu;

	cpu = scx_bpf_select_cpu_dfl(p, prev_cpu, wake_flags, &is_idle);
	/* The stalled CPU looks idle: keep wakeups away, or every task would
	 * drain into it. (A task allowed only there still lands on it.) */
	if (cpu_stalled(cpu))
		return cpu_stalled(prev_cpu) ? stall_cpu_alt : prev_cpu;
	if (is_piled(p))
		return pile_cpu;
	/*
	 * Faulted tasks must go through enqueue, where they are diverted, so
	 * only take the direct-dispatch shortcut when no fault can apply.
	 */
	if (is_idle && !stall_armed() && !is_degraded(p) &&
	    !is_slowed(p, SCX_ENQ_WAKEUP)) {
		__sync_fetch_and_add(&nr_direct, 1);
		scx_bpf_dispatch(p, SCX_DSQ_LOCAL, slice_ns, 0);
	}
	return cpu;
}

void BPF_STRUCT_OPS(demo_enqueue, struct task_struct *p, u64 enq_flags)
{
	u64 cgid;

	__sync_fetch_and_add(&nr_enqueued, 1);

	if (degrade && !degrade_cgid) {
		cgid = task_cgid(p);
		/* Racy max is fine: the target only needs to converge. */
		if (cgid > max_cgid)
			max_cgid = cgid;
	}

	if (is_stall_victim(p)) {
		__sync_fetch_and_add(&nr_stalled, 1);
		scx_bpf_dispatch(p, STALL_DSQ, slice_ns, enq_flags);
		return;
	}
	if (is_piled(p)) {
		scx_bpf_dispatch(p, SCX_DSQ_LOCAL_ON | pile_cpu, slice_ns,
				 enq_flags);
		return;
	}
	if (is_slowed(p, enq_flags)) {
		__sync_fetch_and_add(&nr_slowed, 1);
		scx_bpf_dispatch_vtime(p, SLOW_DSQ, slice_ns,
				       bpf_ktime_get_ns() + slow_ns, enq_flags);
		return;
	}
	if (is_degraded(p)) {
		__sync_fetch_and_add(&nr_degraded, 1);
		scx_bpf_dispatch(p, DEGRADE_DSQ, degrade_slice_ns, enq_flags);
	} else {
		scx_bpf_dispatch(p, cpu_to_llc(scx_bpf_task_cpu(p)), slice_ns,
				 enq_flags);
	}
	kick_idle(p);
}

void BPF_STRUCT_OPS(demo_dispatch, s32 cpu, struct task_struct *prev)
{
	u64 n = __sync_fetch_and_add(&nr_dispatch, 1);
	u32 llc = cpu_to_llc(cpu);
	u32 i;

	maybe_crash();
	if (cpu_stalled(cpu))
		return;
	if (slow_ns && release_slowed())
		return;

	if (fail_verify) {
		u32 zero = 0;
		u64 *slot = bpf_map_lookup_elem(&demo_scratch, &zero);

		/*
		 * Deliberately unchecked index: the map has one u64 and cpu
		 * is unbounded, so the verifier must reject this program.
		 * Dead code (and pruned) unless fail_verify is set.
		 */
		if (slot)
			verify_sink = slot[cpu];
	}

	/* Degraded tasks get every DEGRADE_EVERY-th turn... */
	if (degrade && n % DEGRADE_EVERY == 0 && scx_bpf_consume(DEGRADE_DSQ)) {
		__sync_fetch_and_add(&nr_degraded_run, 1);
		return;
	}

	if (scx_bpf_consume(llc))
		return;

	if (steal) {
		for (i = 1; i < MAX_LLCS; i++) {
			if (i >= nr_llcs)
				break;
			if (scx_bpf_consume((llc + i) % nr_llcs)) {
				__sync_fetch_and_add(&nr_stolen, 1);
				return;
			}
		}
	}

	/* ...or any turn nobody else wants, so they never stall. */
	if (degrade && scx_bpf_consume(DEGRADE_DSQ))
		__sync_fetch_and_add(&nr_degraded_run, 1);
}

void BPF_STRUCT_OPS(demo_tick, struct task_struct *p)
{
	maybe_crash();
	/* The task that was running on the stalled CPU when the stall began is not
	 * re-enqueued by itself (nothing kicks that CPU): end its slice, so it goes
	 * through enqueue and is parked like the rest. Without this the stall did not
	 * engage in about one run in six (the running spinner kept the CPU). */
	if (p->tgid != self_tgid && cpu_stalled(bpf_get_smp_processor_id()))
		p->scx.slice = 0;
}

s32 BPF_STRUCT_OPS_SLEEPABLE(demo_init)
{
	s32 ret;
	u32 i;

	start_ns = bpf_ktime_get_ns();

	for (i = 0; i < MAX_LLCS; i++) {
		if (i >= nr_llcs)
			break;
		ret = scx_bpf_create_dsq(i, -1);
		if (ret)
			return ret;
	}
	ret = scx_bpf_create_dsq(STALL_DSQ, -1);
	if (ret)
		return ret;
	ret = scx_bpf_create_dsq(DEGRADE_DSQ, -1);
	if (ret)
		return ret;
	if (slow_ns) {
		u32 zero = 0;
		struct slow_timer *st;

		ret = scx_bpf_create_dsq(SLOW_DSQ, -1);
		if (ret)
			return ret;
		st = bpf_map_lookup_elem(&demo_slow_timer, &zero);
		if (!st)
			return -2; /* -ENOENT: cannot happen for an array map */
		bpf_timer_init(&st->timer, &demo_slow_timer, CLOCK_MONOTONIC);
		bpf_timer_set_callback(&st->timer, slow_timer_fn);
		ret = bpf_timer_start(&st->timer, SLOW_POLL_NS, 0);
		if (ret)
			return ret;
	}
	return 0;
}

void BPF_STRUCT_OPS(demo_exit, struct scx_exit_info *ei)
{
	uei.exit_code = ei->exit_code;
	bpf_probe_read_kernel_str(uei.reason, sizeof(uei.reason), ei->reason);
	bpf_probe_read_kernel_str(uei.msg, sizeof(uei.msg), ei->msg);
	if (ei->dump)
		bpf_probe_read_kernel_str(uei_dump, sizeof(uei_dump), ei->dump);
	/* Publish kind last: userspace polls it to learn the record is complete. */
	barrier();
	uei.kind = ei->kind;
}

SEC(".struct_ops.link")
struct sched_ext_ops demo_ops = {
	.select_cpu = (void *)demo_select_cpu,
	.enqueue = (void *)demo_enqueue,
	.dispatch = (void *)demo_dispatch,
	.tick = (void *)demo_tick,
	.init = (void *)demo_init,
	.exit = (void *)demo_exit,
	.timeout_ms = 3000,
	/* Must cover DEMO_DUMP_LEN: the kernel writes at most this much. */
	.exit_dump_len = 16384,
	.name = "scx_demo",
};
