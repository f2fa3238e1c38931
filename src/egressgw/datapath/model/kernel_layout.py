"""The kernel's layout: which word of which array means what, and its flags and statuses.

``kernel_state.State`` names the arrays; the constants here name the words in them:
``S_*`` index ``st``, ``F_*`` ``fs``, ``C_*`` ``cfg``, ``T_*`` ``cfgf``, ``K_*`` ``cnt``;
``R_*`` a connection record (a ``CR`` row), ``E_*`` an IN NAT entry (an ``NR`` row),
``H_*`` a pending event (an ``HI`` row). numba freezes them into the compiled code as
constants, which is why this file is one of the cache key's sources (kernel_jit.SOURCES).
"""

from __future__ import annotations

# -- indices into st ------------------------------------------------------------------------
S_NAT_FREE = 0
S_NAT_NFREE = 1
S_HEAD = 2  # + family: most recently used
S_TAIL = 4  # + family: least recently used
S_COUNT = 6  # + family: entries in the family's map
S_CONN_FREE = 8
S_CONN_NFREE = 9
S_CONN_COUNT = 10
S_HEAP_SIZE = 11
S_SEQ = 12
S_MT_INDEX = 13
S_BATCH_POS = 14
S_SIGNAL_DUE = 15  # a bit per family whose nat_fill_up woke the GC
S_CT_COUNT = 16
S_ORPHANS = 17  # a bit per family: some IN entry may have an owner without a CT entry
S_GC_CACHED = 18  # ctmap's cachedGCInterval, ns (0: unset)
ST_SIZE = 19

# -- indices into fs ------------------------------------------------------------------------
F_NOW = 0
F_NEXT_GC = 1
F_GC_INTERVAL = 2
F_MUTED_UNTIL = 3  # nat_fill_up is muted while a GC pass runs
F_LAST_GC = 4  # when the previous pass started (-inf: none yet)
FS_SIZE = 5

# -- indices into cfg / cfgf ----------------------------------------------------------------
C_CAP = 0
C_PMIN = 1
C_PMAX = 2
C_RETRIES = 3
C_THRES = 4
C_FIXED_GC = 5
C_CT_TCP_MAX = 6
C_CT_ANY_MAX = 7
C_GC_MAX_NS = 8  # --conntrack-gc-max-interval in ns (0: none)
C_CLAMP = 9  # ports.Clamp: 0 modulo (v1.16), 1 multiply-shift (v1.17+)
CFG_SIZE = 10
T_TCP = 0
T_SYN = 1
T_FIN = 2
T_ANY = 3
T_GC_PASS = 4
CFGF_SIZE = 5

# -- indices into cnt -----------------------------------------------------------------------
K_ATTEMPTED = 0
K_ESTABLISHED = 1
K_CLOSED = 2
K_ALLOCATIONS = 3
K_DROPS_NO_MAPPING = 4
K_EVICT_OUT = 5
K_EVICT_IN = 6
K_BROKEN = 7
K_REPLY_DROPS = 8
K_SIGNALS = 9
K_GC_RUNS = 10
K_RETRANSMITS = 11
K_CONNECT_FAILED = 12
CNT_SIZE = 13

# -- connection record words (CR) -----------------------------------------------------------
R_SRC = 0
R_DST = 1
R_EGRESS = 2
R_PORTS = 3  # sport << 16 | dport
R_MISC = 4  # port << 16 | proto << 8 | flags
R_OPREV = 5  # the OUT entry (when CF_OUT): LRU links and created second
R_ONEXT = 6
R_OCREATED = 7
R_REFS = 8
R_NEXT = 9  # hash chain, or free list
CR_WORDS = 12  # words 10-11: CT expiry, float64 column 5 of the CF view
CF_EXPIRY = 5

# -- NAT entry words (NR) -------------------------------------------------------------------
E_OWNER = 0
E_ADDR = 1
E_PORTFLAGS = 2  # port << 8 | flags
E_DST = 3  # the rest of the IN key, so a probe reads no record: remote address,
E_DPORT_PROTO = 4  # remote port << 8 | proto
E_HNEXT = 5
E_PREV = 6
E_NEXT = 7  # LRU next, or free list
E_CREATED = 8  # whole seconds
NR_WORDS = 9

NONE = 0xFFFFFFFF
# LRU list nodes: an IN entry is its NR row, an OUT entry is its record number | OUT_TAG.
OUT_TAG = 0x8000_0000

# -- event rows (HI int64, HF its float64 view) ----------------------------------------------
H_TIME = 0  # float
H_END = 1  # float
H_KA = 2  # float
H_SEQ = 3
H_CONN = 4
H_EGRESS_KIND = 5  # egress << 16 | retransmissions left << 8 | h_kind
H_RTO = 6  # float: a retransmission's next timeout
H_START = 7  # float: when a retransmitting connection started
H_WORDS = 8

# -- flags ----------------------------------------------------------------------------------
CF_USED = 1
CF_CT = 2
CF_BROKEN = 4
# The CT entry's TCP state (see reference.py): the reply direction's SYN, seen_non_syn,
# and each direction's closing flag.
CF_RX_SYN = 8
CF_NON_SYN = 16
CF_OUT = 32  # the record holds the connection's OUT NAT entry
CF_TX_CLOSING = 64
CF_RX_CLOSING = 128
CF_CLOSED = CF_TX_CLOSING | CF_RX_CLOSING
CF_TCP_STATE = CF_RX_SYN | CF_NON_SYN | CF_CLOSED
NF_USED = 1
NF_IN = 2
NF_V6 = 4
HK_KEEPALIVE = 4  # h_kind: low two bits are the EndKind
HK_RETRY = 8

# packet flags (types.TcpFlags)
P_SYN = 1
P_FIN = 2
P_RST = 4

TCP = 6
FIN_END = 0
RST_END = 1
IDLE = 2
RST_SERVER_END = 3
DROP_NO_MAPPING = 167
V6_BIT = 0x8000_0000

OK = 0
NEED_CONN = 1
NEED_NAT = 2
NEED_HEAP = 3
