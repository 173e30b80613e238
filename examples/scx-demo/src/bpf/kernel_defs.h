/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Minimal, hand-written kernel declarations for scx_demo.bpf.c.
 *
 * Instead of a generated vmlinux.h this declares only what the scheduler
 * touches. Every struct carries preserve_access_index, so libbpf relocates
 * field offsets against the running kernel's BTF (CO-RE): the layouts below
 * need the right field names and types, not the right offsets.
 *
 * struct sched_ext_ops is special: libbpf matches struct_ops members by name
 * against the kernel's BTF and copies non-callback members (flags, timeout_ms,
 * name) by value, so those members must have the kernel's sizes.
 *
 * Kfunc names follow the 6.12 sched_ext API (scx_bpf_dispatch/consume; the
 * dsq_insert/dsq_move_to_local names only appear in 6.13+).
 */
#ifndef SCX_DEMO_KERNEL_DEFS_H
#define SCX_DEMO_KERNEL_DEFS_H

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;

typedef __u8 u8;
typedef __u16 u16;
typedef __u32 u32;
typedef __u64 u64;
typedef __s32 s32;
typedef __s64 s64;
typedef _Bool bool;
#define true 1
#define false 0
#define NULL ((void *)0)

/* From include/uapi/linux/bpf.h (stable UAPI values). */
enum {
	BPF_MAP_TYPE_ARRAY = 2,
};
enum {
	BPF_ANY = 0,
};

struct bpf_timer {
	u64 __opaque[2];
} __attribute__((aligned(8)));

/* From include/linux/sched.h. */
#define PF_KTHREAD 0x00200000

/* libbpf's headers (extracted by libbpf-cargo) need the __uN types above. */
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct kernfs_node {
	u64 id;
} __attribute__((preserve_access_index));

struct cgroup {
	struct kernfs_node *kn;
} __attribute__((preserve_access_index));

struct css_set {
	struct cgroup *dfl_cgrp;
} __attribute__((preserve_access_index));

struct sched_ext_entity {
	u32 weight;
	u64 slice;
	u64 dsq_vtime;
} __attribute__((preserve_access_index));

struct task_struct {
	unsigned int flags;
	int pid;
	int tgid;
	char comm[16];
	struct css_set *cgroups;
	const struct cpumask *cpus_ptr;
	struct sched_ext_entity scx;
} __attribute__((preserve_access_index));

/*
 * Only passed through, but libbpf checks kfunc prototypes against the kernel
 * and does not accept a forward declaration where the kernel has a struct.
 */
struct cpumask {
	unsigned long bits[1];
} __attribute__((preserve_access_index));

/* Opaque to us: only passed through. */
struct scx_init_task_args;
struct scx_exit_task_args;

enum scx_exit_kind {
	SCX_EXIT_NONE = 0,
	SCX_EXIT_DONE = 1,
	SCX_EXIT_UNREG = 64,
	SCX_EXIT_UNREG_BPF = 65,
	SCX_EXIT_UNREG_KERN = 66,
	SCX_EXIT_SYSRQ = 67,
	SCX_EXIT_ERROR = 1024,
	SCX_EXIT_ERROR_BPF = 1025,
	SCX_EXIT_ERROR_STALL = 1026,
};

struct scx_exit_info {
	enum scx_exit_kind kind;
	s64 exit_code;
	const char *reason;
	char *msg;
	/* sched_ext's debug dump (scx_dump_state), filled for error exits. */
	char *dump;
} __attribute__((preserve_access_index));

/* Built-in DSQ ids (enum scx_dsq_id_flags). */
#define SCX_DSQ_FLAG_BUILTIN (1ULL << 63)
#define SCX_DSQ_GLOBAL (SCX_DSQ_FLAG_BUILTIN | 1)
#define SCX_DSQ_LOCAL (SCX_DSQ_FLAG_BUILTIN | 2)
#define SCX_DSQ_FLAG_LOCAL_ON (1ULL << 62)
#define SCX_DSQ_LOCAL_ON (SCX_DSQ_FLAG_BUILTIN | SCX_DSQ_FLAG_LOCAL_ON)

/* enum scx_kick_flags */
#define SCX_KICK_IDLE 1

/* enum scx_enq_flags */
#define SCX_ENQ_WAKEUP 1ULL

/* include/uapi/linux/time.h */
#define CLOCK_MONOTONIC 1

#define SCX_OPS_NAME_LEN 128
#define SCX_EXIT_MSG_LEN 1024

/*
 * Only the callbacks scx_demo implements plus the data members it sets.
 * Matching is by member name, so order and omissions do not matter.
 */
struct sched_ext_ops {
	s32 (*select_cpu)(struct task_struct *p, s32 prev_cpu, u64 wake_flags);
	void (*enqueue)(struct task_struct *p, u64 enq_flags);
	void (*dispatch)(s32 cpu, struct task_struct *prev);
	void (*tick)(struct task_struct *p);
	s32 (*init)(void);
	void (*exit)(struct scx_exit_info *ei);
	u64 flags;
	u32 timeout_ms;
	u32 exit_dump_len;
	char name[SCX_OPS_NAME_LEN];
};

/* sched_ext kfuncs, as named in the 6.12 kernel BTF. */
extern s32 scx_bpf_create_dsq(u64 dsq_id, s32 node) __ksym;
extern void scx_bpf_dispatch(struct task_struct *p, u64 dsq_id, u64 slice,
			     u64 enq_flags) __ksym;
extern bool scx_bpf_consume(u64 dsq_id) __ksym;
extern s32 scx_bpf_dsq_nr_queued(u64 dsq_id) __ksym;
extern void bpf_rcu_read_lock(void) __ksym;
extern void bpf_rcu_read_unlock(void) __ksym;
extern s32 scx_bpf_select_cpu_dfl(struct task_struct *p, s32 prev_cpu,
				  u64 wake_flags, bool *is_idle) __ksym;
extern s32 scx_bpf_task_cpu(const struct task_struct *p) __ksym;
extern bool bpf_cpumask_test_cpu(u32 cpu, const struct cpumask *cpumask) __ksym;
extern s32 scx_bpf_pick_idle_cpu(const struct cpumask *cpus_allowed,
				 u64 flags) __ksym;
extern void scx_bpf_kick_cpu(s32 cpu, u64 flags) __ksym;
extern const struct cpumask *scx_bpf_get_online_cpumask(void) __ksym;
extern void scx_bpf_put_cpumask(const struct cpumask *cpumask) __ksym;
extern void scx_bpf_error_bstr(char *fmt, unsigned long long *data,
			       u32 data__sz) __ksym;
extern void scx_bpf_dispatch_vtime(struct task_struct *p, u64 dsq_id,
				   u64 slice, u64 vtime, u64 enq_flags) __ksym;

/*
 * Open-coded DSQ iterator (bpf_for_each(scx_dsq, ...)). The kernel's struct is
 * opaque storage of this size; libbpf checks it against the kernel BTF.
 */
struct bpf_iter_scx_dsq {
	u64 __opaque[6];
} __attribute__((aligned(8)));
extern int bpf_iter_scx_dsq_new(struct bpf_iter_scx_dsq *it, u64 dsq_id,
				u64 flags) __ksym;
extern struct task_struct *
bpf_iter_scx_dsq_next(struct bpf_iter_scx_dsq *it) __ksym;
extern void bpf_iter_scx_dsq_destroy(struct bpf_iter_scx_dsq *it) __ksym;
/* The iterator that libbpf's bpf_for_each() declares, for kfuncs that take it. */
#define BPF_FOR_EACH_ITER (&___it)
extern bool scx_bpf_dispatch_from_dsq(struct bpf_iter_scx_dsq *it__iter,
				      struct task_struct *p, u64 dsq_id,
				      u64 enq_flags) __ksym;

#endif /* SCX_DEMO_KERNEL_DEFS_H */
