# Every field kind the fast encoder writes, with explicit defaults (tests/test_encoder.py).
@0xd4c1b0a1e5f6a7c1;
enum Color { red @0; green @1; blue @2; }
struct Person { name @0 :Text; age @1 :UInt8; }

struct Thing {
  id @0 :Int64;
  flag @1 :Bool = true;
  count @2 :Int32 = 7;
  ratio @3 :Float32 = 1.5;
  name @4 :Text = "dflt";
  color @5 :Color = blue;
  other @6 :Bool;
  nums @7 :List(Int16);
  bits @8 :List(Bool);
  colors @9 :List(Color);
  blobs @10 :List(Data);
  nested @11 :List(List(Text));
  d @12 :Data;
  big @13 :UInt64 = 18446744073709551615;
  neg @14 :Int8 = -3;
  owner @15 :Person;
  people @16 :List(Person);
  score @17 :Float64;
  tags @18 :List(Text);
}
