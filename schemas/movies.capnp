# Movies, in the lineage of Netflix Hollow's own examples: a catalog with a
# Timestamp type shared by several record types.
@0xd4c1b0a1e5f6a7b8;

struct Timestamp {
  unixMillis @0 :Int64;
}

struct Movie {
  id @0 :UInt64;
  title @1 :Text;
  year @2 :UInt16;
  rating @3 :Float32;
  genre @4 :Text;
  tags @5 :List(Text);
  releasedAt @6 :Timestamp;
}

struct Actor {
  id @0 :UInt64;
  name @1 :Text;
  bornAt @2 :Timestamp;
}

struct Role {
  movieId @0 :UInt64;
  actorId @1 :UInt64;
  character @2 :Text;
}
