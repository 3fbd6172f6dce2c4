# The envelope of a hollowd state file (format version 3).
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
