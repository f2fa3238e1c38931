// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * egressgw's egress gateway SNAT as a tc program (clsact on the gateway's uplink).
 *
 * Egress: packets selected by the policy maps (source IP + destination CIDR, longest
 * prefix) are source-NATed behind their egress IP; ingress: replies are reverse-NATed.
 * TCP, UDP, ICMP echo and ICMPv6 echo; IPv4 and IPv6 (no extension headers or IP
 * fragments: those pass unchanged).
 *
 * The semantics are Cilium's (bpf/lib/nat.h at v1.16.2, snat_v4_new_mapping and
 * snat_v6_new_mapping), written here from its documented behaviour:
 *  - an existing OUT entry for the tuple is reused as it is;
 *  - a new mapping keeps the original source port (ICMP: the echo id) when it lies in
 *    the NAT range, else takes clamp(random); it then tries up to `retries` times to
 *    insert the reply-direction IN entry with BPF_NOEXIST; after a collision, try 0
 *    draws clamp(random) and later tries clamp(port + 1);
 *  - once an IN entry is in, the OUT entry is inserted; if that fails the IN entry is
 *    deleted again and the packet dropped;
 *  - no free port within `retries`: drop with DROP_NAT_NO_MAPPING (167), counted in the
 *    per-CPU metrics map;
 *  - tries used are counted in a per-CPU histogram (Cilium v1.18's
 *    cilium_snat_v4_alloc_retries; here retries_v4 and retries_v6);
 *  - more than `signal_thres` tries: a nat_fill_up signal to the agent (ring buffer).
 * The clamp, retries and signal threshold differ between versions and come from the
 * config map (struct snat_config; its Python side is egressgw/datapath/bpf/layout.py):
 *  v1.16: clamp(v) = (v % (u16)(end - start)) + start, 128 tries, signal above 64;
 *  v1.17: clamp(v) = start + (((u32)v * (end - start + 1)) >> 16), 128 tries, above 64;
 *  v1.18: the v1.17 clamp, 32 tries, signal above 16.
 *
 * Key and value layouts are Cilium's (bpf/lib/common.h struct ipv4_ct_tuple and
 * ipv6_ct_tuple, packed; bpf/lib/nat.h struct ipv4_nat_entry / ipv6_nat_entry). The
 * value's two "future use" words carry what connection tracking needs in user space:
 * pad1 = the last time (seconds) a packet used the entry, pad2 = TCP FIN/RST seen and
 * whether any packet after the first used it.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define TUPLE_F_OUT 0
#define TUPLE_F_IN 1

#define DROP_NAT_NO_MAPPING 167
#define DROP_NO_EGRESS_GW 194
/* Not a drop: a TCP packet other than a SYN found no OUT entry (it was evicted) and got a
 * new mapping, so the server sees a new tuple and the connection breaks. Counted in the
 * metrics map at an index no Cilium drop reason uses. */
#define EVENT_REMAPPED 1

#define MAX_RETRIES 128 /* the largest SNAT_COLLISION_RETRIES of any version */

#define SIGNAL_NAT_FILL_UP 0
#define SIGNAL_PROTO_V4 0
#define SIGNAL_PROTO_V6 1

#define POLICY_MASQUERADE 1
#define POLICY_EXCLUDED 2
#define POLICY_NO_GATEWAY 3

#define CLAMP_V16 0
#define CLAMP_V17 1

#define SEEN_FIN 1
#define SEEN_RST 2
#define SEEN_USED 4 /* carried a packet after the one that created it */

#define IPPROTO_ICMPV6_ 58
#define ICMP_ECHO_REQUEST 8
#define ICMP_ECHO_REPLY 0
#define ICMPV6_ECHO_REQUEST_ 128
#define ICMPV6_ECHO_REPLY_ 129

/* The part of a CT tuple after its addresses: the same in both families. */
struct ct_tuple_l4 {
	__be16 dport;
	__be16 sport;
	__u8 nexthdr;
	__u8 flags;
} __attribute__((packed));

struct ipv4_ct_tuple {
	__be32 daddr;
	__be32 saddr;
	struct ct_tuple_l4 l4;
} __attribute__((packed));

struct ipv6_ct_tuple {
	__u8 daddr[16];
	__u8 saddr[16];
	struct ct_tuple_l4 l4;
} __attribute__((packed));

struct nat_entry {
	__u64 created;
	__u64 needs_ct;
	__u64 pad1; /* last used, seconds */
	__u64 pad2; /* SEEN_FIN | SEEN_RST | SEEN_USED */
};

struct ipv4_nat_entry {
	struct nat_entry common;
	__be32 to_addr;
	__be16 to_port;
	__u16 pad;
};

struct ipv6_nat_entry {
	struct nat_entry common;
	__u8 to_addr[16];
	__be16 to_port;
	__u8 pad[6];
};

struct policy_key4 {
	__u32 prefixlen; /* 32 + destination prefix length */
	__be32 saddr;
	__be32 daddr;
};

struct policy_key6 {
	__u32 prefixlen; /* 128 + destination prefix length */
	__u8 saddr[16];
	__u8 daddr[16];
};

struct policy_value4 {
	__be32 egress_ip;
	__u32 action;
};

struct policy_value6 {
	__u8 egress_ip[16];
	__u32 action;
};

struct snat_config {
	__u16 min_port;
	__u16 max_port;
	__u32 retries;
	__u32 signal_thres;
	__u32 clamp;
};

struct metrics_value {
	__u64 count;
	__u64 bytes;
};

struct signal_msg {
	__u32 signal_nr;
	__u32 proto;
};

/* Sizes are placeholders: user space creates and pins every map (sized by
 * --bpf-nat-global-max) and the loader reuses them. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ipv4_ct_tuple);
	__type(value, struct ipv4_nat_entry);
	__uint(max_entries, 1024);
} snat_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ipv6_ct_tuple);
	__type(value, struct ipv6_nat_entry);
	__uint(max_entries, 1024);
} snat_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key4);
	__type(value, struct policy_value4);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} egress_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key6);
	__type(value, struct policy_value6);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} egress_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct snat_config);
	__uint(max_entries, 1);
} snat_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct metrics_value);
	__uint(max_entries, 256);
} drop_metrics SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, MAX_RETRIES + 1);
} retries_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, MAX_RETRIES + 1);
} retries_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} signals SEC(".maps");

static __always_inline __u64 mono_seconds(void)
{
	return bpf_ktime_get_ns() / 1000000000ULL;
}

static __always_inline __u16 clamp_port(const struct snat_config *cfg, __u16 val)
{
	__u16 start = cfg->min_port, end = cfg->max_port;

	if (cfg->clamp == CLAMP_V17)
		return start + (__u16)((((__u32)val) * ((__u32)(end - start) + 1)) >> 16);
	return (__u16)(val % (__u16)(end - start)) + start;
}

static __always_inline __u16 keep_port(const struct snat_config *cfg, __u16 val)
{
	if (val >= cfg->min_port && val <= cfg->max_port)
		return val;
	return clamp_port(cfg, (__u16)bpf_get_prandom_u32());
}

static __always_inline void count_drop(__u32 reason, __u32 len)
{
	struct metrics_value *m = bpf_map_lookup_elem(&drop_metrics, &reason);

	if (m) {
		m->count++;
		m->bytes += len;
	}
}

static __always_inline void count_tries(void *hist, __u32 tries)
{
	__u32 *n = bpf_map_lookup_elem(hist, &tries);

	if (n)
		(*n)++;
}

static __always_inline void signal_fill_up(__u32 proto)
{
	struct signal_msg msg = { .signal_nr = SIGNAL_NAT_FILL_UP, .proto = proto };

	bpf_ringbuf_output(&signals, &msg, sizeof(msg), 0);
}

static __always_inline int ip_proto_tcp_midstream(__u8 proto, __u8 tcp_flags)
{
	return proto == IPPROTO_TCP && !(tcp_flags & 0x02);
}

/* The last-used time and TCP closing flags of an entry that carried a packet. */
static __always_inline void touch(struct nat_entry *e, __u8 tcp_flags, __u64 now)
{
	__u64 seen = SEEN_USED;

	if (tcp_flags & 0x01)
		seen |= SEEN_FIN;
	if (tcp_flags & 0x04)
		seen |= SEEN_RST;
	if (e->pad1 != now)
		e->pad1 = now;
	if (seen & ~e->pad2)
		e->pad2 |= seen;
}

/* Where a packet's L4 fields are: ports (or echo id) and checksum offsets. */
struct l4_info {
	__u32 off;       /* L4 header */
	__u32 csum_off;  /* checksum field */
	__u32 sport_off; /* source port / echo id */
	__u32 dport_off; /* destination port (0: none) */
	__be16 sport;    /* source port, or echo id on requests */
	__be16 dport;    /* destination port, or echo id on replies */
	__u8 tcp_flags;
	__u8 csum_flags; /* BPF_F_MARK_MANGLED_0 for UDP */
	__u8 pseudo;     /* the checksum covers a pseudo header */
};

/*
 * Parse the L4 header at `off`. `egress`: ICMP echo requests carry the id as source
 * port (Cilium's OUT tuple: sport = id, dport = 0); on ingress echo replies carry it as
 * destination port (IN tuple: sport = 0, dport = id). Returns 0 when handled.
 */
static __always_inline int parse_l4(struct __sk_buff *skb, __u8 proto, __u32 off, int egress,
				    struct l4_info *l4)
{
	__u8 hdr[14];

	l4->off = off;
	l4->tcp_flags = 0;
	l4->csum_flags = 0;
	l4->pseudo = 1;
	if (proto == IPPROTO_TCP) {
		if (bpf_skb_load_bytes(skb, off, hdr, 14) < 0)
			return -1;
		l4->csum_off = off + 16;
		l4->sport_off = off;
		l4->dport_off = off + 2;
		__builtin_memcpy(&l4->sport, hdr, 2);
		__builtin_memcpy(&l4->dport, hdr + 2, 2);
		l4->tcp_flags = hdr[13];
		return 0;
	}
	if (proto == IPPROTO_UDP) {
		if (bpf_skb_load_bytes(skb, off, hdr, 8) < 0)
			return -1;
		l4->csum_off = off + 6;
		l4->sport_off = off;
		l4->dport_off = off + 2;
		l4->csum_flags = BPF_F_MARK_MANGLED_0;
		__builtin_memcpy(&l4->sport, hdr, 2);
		__builtin_memcpy(&l4->dport, hdr + 2, 2);
		return 0;
	}
	if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6_) {
		__u8 request = proto == IPPROTO_ICMP ? ICMP_ECHO_REQUEST : ICMPV6_ECHO_REQUEST_;
		__u8 reply = proto == IPPROTO_ICMP ? ICMP_ECHO_REPLY : ICMPV6_ECHO_REPLY_;
		__be16 id;

		if (bpf_skb_load_bytes(skb, off, hdr, 8) < 0)
			return -1;
		if (hdr[0] != (egress ? request : reply))
			return -1;
		__builtin_memcpy(&id, hdr + 4, 2);
		l4->csum_off = off + 2;
		l4->pseudo = proto == IPPROTO_ICMPV6_;
		l4->sport_off = off + 4;
		l4->dport_off = off + 4;
		l4->sport = egress ? id : 0;
		l4->dport = egress ? 0 : id;
		return 0;
	}
	return -1;
}

/* ---------------------------------------------------------------- both families */

/*
 * Cilium's nat.h writes the IPv4 and IPv6 paths twice, the same but for the address size;
 * here the logic is written once and each family supplies its maps, its header parsing,
 * its addresses and its checksum arithmetic.
 */

/* One address family's maps. */
struct snat_family {
	void *nat;          /* snat_v4 / snat_v6 */
	void *retries;      /* retries_v4 / retries_v6 */
	__u32 signal_proto; /* SIGNAL_PROTO_V4 / SIGNAL_PROTO_V6 */
};

/*
 * A connection's two NAT entries in either family's layout (struct ipv4_ct_tuple and
 * ipv4_nat_entry, or the ipv6 ones). The family fills in the addresses and the IN value's
 * port; the shared code does the rest.
 */
struct snat_conn {
	void *otuple;            /* OUT key: the packet's tuple */
	void *ostate;            /* OUT value: the egress IP, and the port once found */
	void *rtuple;            /* IN key: server -> egress IP; its dport is what is searched */
	void *rstate;            /* IN value: the pod's address and port */
	struct ct_tuple_l4 *out; /* otuple's ports and protocol */
	struct ct_tuple_l4 *in;  /* rtuple's */
	__be16 *to_port;         /* ostate's port */
};

/* Not a tc verdict: the policy says masquerade, go on and translate. */
#define VERDICT_NAT (-1)

static __always_inline void tuple_l4(struct ct_tuple_l4 *t, const struct l4_info *l4,
				     __u8 proto, __u8 flags)
{
	t->dport = l4->dport;
	t->sport = l4->sport;
	t->nexthdr = proto;
	t->flags = flags;
}

/* A new entry: tracked (needs_ct, as for egress-gateway traffic), created and used now. */
static __always_inline void nat_entry_init(struct nat_entry *e, __u64 now)
{
	e->needs_ct = 1;
	e->created = now;
	e->pad1 = now;
}

/*
 * nat.h snat_v4_new_mapping / snat_v6_new_mapping (v1.16.2): search a port with the IN
 * entry, insert the OUT entry (rolling the IN entry back if that fails), count the tries,
 * signal nat_fill_up above the threshold. Returns 0, or -DROP_NAT_NO_MAPPING.
 */
static __always_inline int snat_new_mapping(const struct snat_config *cfg,
					    const struct snat_family *fam,
					    const struct snat_conn *c)
{
	__u32 retries;
	__u16 port;
	int ret = 0;
	__u64 now = mono_seconds();

	nat_entry_init(c->rstate, now);
	nat_entry_init(c->ostate, now);
	c->in->flags = TUPLE_F_IN;
	c->in->nexthdr = c->out->nexthdr;
	c->in->sport = c->out->dport;

	port = keep_port(cfg, bpf_ntohs(c->out->sport));
	for (retries = 0; retries < MAX_RETRIES; retries++) {
		if (retries >= cfg->retries)
			break;
		c->in->dport = bpf_htons(port);
		if (bpf_map_update_elem(fam->nat, c->rtuple, c->rstate, BPF_NOEXIST) == 0)
			goto create_out;
		port = clamp_port(cfg, retries ? (__u16)(port + 1) : (__u16)bpf_get_prandom_u32());
	}
	count_tries(fam->retries, retries);
	ret = -DROP_NAT_NO_MAPPING;
	goto out;

create_out:
	count_tries(fam->retries, retries);
	*c->to_port = c->in->dport;
	if (bpf_map_update_elem(fam->nat, c->otuple, c->ostate, BPF_NOEXIST) < 0) {
		bpf_map_delete_elem(fam->nat, c->rtuple); /* rollback */
		ret = -DROP_NAT_NO_MAPPING;
	}
out:
	if (retries > cfg->signal_thres)
		signal_fill_up(fam->signal_proto);
	return ret;
}

/*
 * What the egress policy entry's action says: VERDICT_NAT to masquerade; an excluded
 * CIDR passes; a policy without a gateway drops, reason 194 (DROP_NO_EGRESS_GW).
 */
static __always_inline int policy_verdict(struct __sk_buff *skb, __u32 action)
{
	if (action == POLICY_EXCLUDED)
		return TC_ACT_OK;
	if (action != POLICY_MASQUERADE) {
		count_drop(DROP_NO_EGRESS_GW, skb->len);
		return TC_ACT_SHOT;
	}
	return VERDICT_NAT;
}

/*
 * Egress, once the policy said masquerade: the packet's OUT entry, reused as it is (and
 * touched) or made by a new mapping; NULL when no port is free (dropped, reason 167). A
 * mid-stream TCP packet that needed a new mapping lost its entry to an eviction: counted.
 */
static __always_inline struct nat_entry *snat_out_entry(struct __sk_buff *skb,
							 const struct snat_config *cfg,
							 const struct snat_family *fam,
							 const struct snat_conn *c,
							 const struct l4_info *l4)
{
	struct nat_entry *state = bpf_map_lookup_elem(fam->nat, c->otuple);

	if (state) {
		touch(state, l4->tcp_flags, mono_seconds());
		return state;
	}
	if (snat_new_mapping(cfg, fam, c) < 0) {
		count_drop(DROP_NAT_NO_MAPPING, skb->len);
		return NULL;
	}
	if (ip_proto_tcp_midstream(c->out->nexthdr, l4->tcp_flags))
		count_drop(EVENT_REMAPPED, skb->len);
	return c->ostate;
}

/* Ingress: the IN entry a reply matches (touched), or NULL: not ours, it passes unchanged. */
static __always_inline struct nat_entry *snat_in_entry(void *nat, const void *rtuple,
							const struct l4_info *l4)
{
	struct nat_entry *state = bpf_map_lookup_elem(nat, rtuple);

	if (state)
		touch(state, l4->tcp_flags, mono_seconds());
	return state;
}

/* The port (or echo id) and its L4 checksum, once the family rewrote the address. */
static __always_inline int rewrite_port(struct __sk_buff *skb, const struct l4_info *l4,
					__u32 port_off, __be16 old_port, __be16 new_port)
{
	if (old_port == new_port)
		return TC_ACT_OK;
	if (bpf_l4_csum_replace(skb, l4->csum_off, old_port, new_port,
				l4->csum_flags | sizeof(new_port)) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, port_off, &new_port, sizeof(new_port), 0) < 0)
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

/* ---------------------------------------------------------------- IPv4 */

/* The IPv4 header of a packet this program handles (not a fragment). */
static __always_inline int load_ipv4(struct __sk_buff *skb, struct iphdr *ip)
{
	if (bpf_skb_load_bytes(skb, ETH_HLEN, ip, sizeof(*ip)) < 0)
		return -1;
	if (ip->ihl < 5 || (ip->frag_off & bpf_htons(0x3fff)))
		return -1;
	return 0;
}

/* Rewrite an address and port: the tc verdict (TC_ACT_SHOT if a helper failed). */
static __always_inline int rewrite_v4(struct __sk_buff *skb, const struct l4_info *l4,
				      __u32 addr_off, __be32 old_addr, __be32 new_addr,
				      __u32 port_off, __be16 old_port, __be16 new_port)
{
	__u32 l3_csum_off = ETH_HLEN + offsetof(struct iphdr, check);

	if (l4->pseudo &&
	    bpf_l4_csum_replace(skb, l4->csum_off, old_addr, new_addr,
				BPF_F_PSEUDO_HDR | l4->csum_flags | sizeof(new_addr)) < 0)
		return TC_ACT_SHOT;
	if (bpf_l3_csum_replace(skb, l3_csum_off, old_addr, new_addr, sizeof(new_addr)) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, addr_off, &new_addr, sizeof(new_addr), 0) < 0)
		return TC_ACT_SHOT;
	return rewrite_port(skb, l4, port_off, old_port, new_port);
}

static __always_inline int snat_egress_v4(struct __sk_buff *skb, const struct snat_config *cfg)
{
	struct snat_family fam = { &snat_v4, &retries_v4, SIGNAL_PROTO_V4 };
	struct iphdr ip;
	struct policy_key4 pkey = {};
	struct policy_value4 *policy;
	struct ipv4_ct_tuple otuple = {}, rtuple = {};
	struct ipv4_nat_entry ostate = {}, rstate = {}, *to;
	struct snat_conn conn = { &otuple, &ostate, &rtuple, &rstate,
				  &otuple.l4, &rtuple.l4, &ostate.to_port };
	struct l4_info l4;
	int verdict;

	if (load_ipv4(skb, &ip) < 0)
		return TC_ACT_OK;
	pkey.prefixlen = 64;
	pkey.saddr = ip.saddr;
	pkey.daddr = ip.daddr;
	policy = bpf_map_lookup_elem(&egress_v4, &pkey);
	if (!policy)
		return TC_ACT_OK;
	verdict = policy_verdict(skb, policy->action);
	if (verdict != VERDICT_NAT)
		return verdict;
	if (parse_l4(skb, ip.protocol, ETH_HLEN + ip.ihl * 4, 1, &l4) < 0)
		return TC_ACT_OK;

	otuple.daddr = ip.daddr;
	otuple.saddr = ip.saddr;
	tuple_l4(&otuple.l4, &l4, ip.protocol, TUPLE_F_OUT);
	rtuple.saddr = ip.daddr;
	rtuple.daddr = policy->egress_ip;
	rstate.to_addr = ip.saddr;
	rstate.to_port = l4.sport;
	ostate.to_addr = policy->egress_ip;

	to = (struct ipv4_nat_entry *)snat_out_entry(skb, cfg, &fam, &conn, &l4);
	if (!to)
		return TC_ACT_SHOT;
	return rewrite_v4(skb, &l4, ETH_HLEN + offsetof(struct iphdr, saddr), ip.saddr,
			  to->to_addr, l4.sport_off, l4.sport, to->to_port);
}

static __always_inline int snat_ingress_v4(struct __sk_buff *skb)
{
	struct iphdr ip;
	struct ipv4_ct_tuple rtuple = {};
	struct ipv4_nat_entry *to;
	struct l4_info l4;

	if (load_ipv4(skb, &ip) < 0 ||
	    parse_l4(skb, ip.protocol, ETH_HLEN + ip.ihl * 4, 0, &l4) < 0)
		return TC_ACT_OK;
	rtuple.daddr = ip.daddr;
	rtuple.saddr = ip.saddr;
	tuple_l4(&rtuple.l4, &l4, ip.protocol, TUPLE_F_IN);
	to = (struct ipv4_nat_entry *)snat_in_entry(&snat_v4, &rtuple, &l4);
	if (!to)
		return TC_ACT_OK;
	return rewrite_v4(skb, &l4, ETH_HLEN + offsetof(struct iphdr, daddr), ip.daddr,
			  to->to_addr, l4.dport_off, l4.dport, to->to_port);
}

/* ---------------------------------------------------------------- IPv6 */

/* Rewrite an address and port: the tc verdict (TC_ACT_SHOT if a helper failed). */
static __always_inline int rewrite_v6(struct __sk_buff *skb, const struct l4_info *l4,
				      __u32 addr_off, const __u8 *old_addr, const __u8 *new_addr,
				      __u32 port_off, __be16 old_port, __be16 new_port)
{
	__u32 from[4], to[4];
	__s64 diff;

	__builtin_memcpy(from, old_addr, 16);
	__builtin_memcpy(to, new_addr, 16);
	diff = bpf_csum_diff(from, 16, to, 16, 0);
	if (diff < 0)
		return TC_ACT_SHOT;
	/* ICMPv6, TCP and UDP checksums all cover the pseudo header. */
	if (bpf_l4_csum_replace(skb, l4->csum_off, 0, (__u32)diff,
				BPF_F_PSEUDO_HDR | l4->csum_flags) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, addr_off, to, 16, 0) < 0)
		return TC_ACT_SHOT;
	return rewrite_port(skb, l4, port_off, old_port, new_port);
}

static __always_inline int snat_egress_v6(struct __sk_buff *skb, const struct snat_config *cfg)
{
	struct snat_family fam = { &snat_v6, &retries_v6, SIGNAL_PROTO_V6 };
	struct ipv6hdr ip;
	struct policy_key6 pkey = {};
	struct policy_value6 *policy;
	struct ipv6_ct_tuple otuple = {}, rtuple = {};
	struct ipv6_nat_entry ostate = {}, rstate = {}, *to;
	struct snat_conn conn = { &otuple, &ostate, &rtuple, &rstate,
				  &otuple.l4, &rtuple.l4, &ostate.to_port };
	struct l4_info l4;
	int verdict;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
		return TC_ACT_OK;
	pkey.prefixlen = 256;
	__builtin_memcpy(pkey.saddr, &ip.saddr, 16);
	__builtin_memcpy(pkey.daddr, &ip.daddr, 16);
	policy = bpf_map_lookup_elem(&egress_v6, &pkey);
	if (!policy)
		return TC_ACT_OK;
	verdict = policy_verdict(skb, policy->action);
	if (verdict != VERDICT_NAT)
		return verdict;
	if (parse_l4(skb, ip.nexthdr, ETH_HLEN + sizeof(ip), 1, &l4) < 0)
		return TC_ACT_OK;

	__builtin_memcpy(otuple.daddr, &ip.daddr, 16);
	__builtin_memcpy(otuple.saddr, &ip.saddr, 16);
	tuple_l4(&otuple.l4, &l4, ip.nexthdr, TUPLE_F_OUT);
	__builtin_memcpy(rtuple.saddr, &ip.daddr, 16);
	__builtin_memcpy(rtuple.daddr, policy->egress_ip, 16);
	__builtin_memcpy(rstate.to_addr, &ip.saddr, 16);
	rstate.to_port = l4.sport;
	__builtin_memcpy(ostate.to_addr, policy->egress_ip, 16);

	to = (struct ipv6_nat_entry *)snat_out_entry(skb, cfg, &fam, &conn, &l4);
	if (!to)
		return TC_ACT_SHOT;
	return rewrite_v6(skb, &l4, ETH_HLEN + offsetof(struct ipv6hdr, saddr),
			  (const __u8 *)&ip.saddr, to->to_addr, l4.sport_off, l4.sport, to->to_port);
}

static __always_inline int snat_ingress_v6(struct __sk_buff *skb)
{
	struct ipv6hdr ip;
	struct ipv6_ct_tuple rtuple = {};
	struct ipv6_nat_entry *to;
	struct l4_info l4;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0 ||
	    parse_l4(skb, ip.nexthdr, ETH_HLEN + sizeof(ip), 0, &l4) < 0)
		return TC_ACT_OK;
	__builtin_memcpy(rtuple.daddr, &ip.daddr, 16);
	__builtin_memcpy(rtuple.saddr, &ip.saddr, 16);
	tuple_l4(&rtuple.l4, &l4, ip.nexthdr, TUPLE_F_IN);
	to = (struct ipv6_nat_entry *)snat_in_entry(&snat_v6, &rtuple, &l4);
	if (!to)
		return TC_ACT_OK;
	return rewrite_v6(skb, &l4, ETH_HLEN + offsetof(struct ipv6hdr, daddr),
			  (const __u8 *)&ip.daddr, to->to_addr, l4.dport_off, l4.dport, to->to_port);
}

/* ---------------------------------------------------------------- entry points */

SEC("tc")
int egw_egress(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct snat_config *cfg = bpf_map_lookup_elem(&snat_config, &zero);

	if (!cfg || cfg->max_port <= cfg->min_port)
		return TC_ACT_OK; /* not configured yet: route unchanged */
	if (skb->protocol == bpf_htons(ETH_P_IP))
		return snat_egress_v4(skb, cfg);
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return snat_egress_v6(skb, cfg);
	return TC_ACT_OK;
}

SEC("tc")
int egw_ingress(struct __sk_buff *skb)
{
	if (skb->protocol == bpf_htons(ETH_P_IP))
		return snat_ingress_v4(skb);
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return snat_ingress_v6(skb);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
