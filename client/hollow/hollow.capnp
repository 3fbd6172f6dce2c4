# The envelope of a hollowd state file (format version 5).
#
# A state file is: a 128-byte fixed header (see hollow/layout.py), then this
# envelope as an unpacked single-segment Cap'n Proto message, then the
# sections it points to. Every section starts on an 8-byte boundary, so that
# records are read in place from the mapping (Cap'n Proto cxx.md, "Using mmap").
#
# Changing anything here that moves bytes is a format change: bump
# FORMAT_VERSION in hollow/layout.py and add a golden file in tests/golden/.
@0xd1319380365481d8;

struct State {
  namespace @0 :Text;
  version @1 :UInt64;
  parentVersion @2 :UInt64;      # 0 when this is the namespace's first version
  publishedAtNs @3 :Int64;       # CLOCK_REALTIME, nanoseconds
  userSchema @4 :EmbeddedSchema;  # (not "schema": pycapnp readers have a .schema)
  types @5 :List(TypeState);
  baseVersion @6 :UInt64;        # 0: this file holds every record (a base). Otherwise the
                                 # version is the base file `<version>.base` (a hard link to
                                 # the base's inode, shared by every version built on it)
                                 # read through this file's overlays (Overlay below)
  baseContentHash @7 :UInt64;    # the base's header content hash: the link must be that file
  midVersion @8 :UInt64;         # 0: the overlays are over the base. Otherwise they are over
                                 # this earlier version on the same base (its *mid*: a file
                                 # whose overlays are over the base), read as `<version>.mid`,
                                 # a hard link to its file: entries and tombstones are what
                                 # changed since the mid, masked ordinals the mid's, and each
                                 # skipped table holds the mid's ordinals to leave out
  midContentHash @9 :UInt64;     # the mid's header content hash: the link must be that file
}

struct EmbeddedSchema {
  fingerprint @0 :UInt64;        # xxh3_64 over the compiled nodes, in order
  fileName @1 :Text;             # the producer's schema file, for humans
  source @2 :Text;               # its text, for `hollow inspect`
  nodes @3 :List(Data);          # each a message whose root is a schema.capnp Node
}

# The root of a records section: `list` is a List(T) of the section's type,
# indexed by ordinal.
struct Records {
  list @0 :AnyPointer;
}

# A byte range of the state file.
struct Section {
  offset @0 :UInt64;
  length @1 :UInt64;
}

struct TypeState {
  name @0 :Text;
  typeId @1 :UInt64;             # the compiler's 64-bit id of the struct
  count @2 :UInt64;              # live records
  ordinals @3 :UInt64;           # list length: live records plus holes
  records @4 :Section;           # a message whose root is Records
  holes @5 :Section;             # sorted UInt32 ordinals that hold no record
  contentHash @6 :UInt64;        # xxh3_64 of the records and holes sections
  primaryKey @7 :Index;
  indexes @8 :List(Index);       # secondary hash indexes
  hashes @9 :Section;            # UInt64 per ordinal: each record's change hash (0 for a hole);
                                 # a cycle compares its input with these, not with the records
  overlay @10 :Overlay;          # in a version with a base: what changed since the base.
                                 # records, primaryKey and indexes are then the base's
  merges @11 :UInt32;            # a base: compactions by bytes since its records were last
                                 # encoded whole (each carries the dead bytes of the last)
}

# What a version changed since its base, for one type: the records upserted since
# the base (latest value per key), the base keys removed since, and small indexes
# over both. A reader probes the overlay first (a bloom byte, then `keys`), then
# the base. Every UInt64 array below is a Section of little-endian words.
struct Overlay {
  chunks @0 :List(Section);      # Records messages, one per cycle since the base; an entry
                                 # refers to one record of one chunk (older ones may be dead)
  entryOrdinals @1 :Section;     # E ascending ordinals: the live overlay records, by ordinal
  entryRefs @2 :Section;         # E: chunk << 32 | position in that chunk
  entryKeys @3 :Section;         # E: primary-key fingerprints
  entryHashes @4 :Section;       # E: change hashes
  entryStamps @5 :Section;       # E: the version that last changed each record
  tombKeys @6 :Section;          # T: fingerprints of base keys removed since the base
  tombOrdinals @7 :Section;      # T: their ordinals in the base
  tombStamps @8 :Section;        # T: the version that removed each
  masked @9 :Section;            # M ascending base ordinals whose base record is not current
                                 # (over a mid: the mid's ordinals whose record is not)
  bloom @10 :Section;            # bytes: non-zero at fingerprint % length for every key above
  bloomLength @11 :UInt64;       # (the section is padded to whole words)
  keys @12 :Index;               # fingerprint -> entry + 1, or 1 << 63 | tomb + 1
  entryValues @13 :List(Section);  # per secondary index: E value fingerprints of the entries
  maskedValues @14 :List(Section); # per secondary index: M value fingerprints of masked records
  added @15 :List(Index);        # per secondary index: value -> entries having it (postings)
  skipped @16 :List(Index);      # per secondary index: value -> positions in the base's
                                 # postings of that value whose record is masked (over a
                                 # mid: the masked ordinals themselves, in the mid's matches)
  maskedPositions @17 :List(Section);  # per secondary index: M positions of the masked
                                 # records in their value's postings (what `skipped` holds;
                                 # over a mid, their ordinals)
}

enum KeyKind {
  exactInt @0;                   # one integer field; slots hold the key itself
  hashed @1;                     # slots hold xxh3_64 of the canonical key bytes
}

enum KeyType {
  int @0;
  text @1;
  data @2;
  bool @3;
}

# An open-addressed hash table with linear probing, laid out as one flat
# array that a reader probes in place: `capacity` slots of two UInt64 each,
# the key (or its hash) and the value, side by side so that a probe touches
# one cache line. A slot is empty when its value is 0.
struct Index {
  fields @0 :List(Text);
  fieldTypes @1 :List(KeyType);
  kind @2 :KeyKind;
  unique @3 :Bool;               # primary key: one record per key
  capacity @4 :UInt64;
  slots @5 :Section;             # capacity x (UInt64 key, UInt64 value); value:
                                 # unique: ordinal + 1; otherwise
                                 # (start in `postings` + 1) | count << 32
  postings @6 :Section;          # UInt32 ordinals grouped by key (non-unique only)
  distinct @7 :UInt64;           # number of distinct keys
}
