# Every field kind hollowd's encoder writes, checked against the reference
# implementation's `capnp convert binary:json` (tests/test_capnp_convert.py):
# every integer width, floats, bools, Text, Data, enums, Void, lists of each,
# nested structs and lists of them, explicit defaults on data and pointer fields.
@0xc7a51d3e9b2f4086;

enum Genre { drama @0; comedy @1; horror @2; documentary @3; }

struct Point {
  x @0 :Int32;
  y @1 :Int32 = -1;
  label @2 :Text;
}

struct Credit {
  name @0 :Text;
  role @1 :Genre = comedy;
  share @2 :Float32 = 0.5;
  at @3 :Point;
  aliases @4 :List(Text);
}

struct Item {
  id @0 :UInt32;
  i8 @1 :Int8;
  i16 @2 :Int16 = -300;
  i32 @3 :Int32;
  i64 @4 :Int64 = -9000000000;
  u8 @5 :UInt8 = 200;
  u16 @6 :UInt16;
  u32 @7 :UInt32 = 4000000000;
  u64 @8 :UInt64;
  f32 @9 :Float32 = 0.25;
  f64 @10 :Float64 = -1.5e300;
  flag @11 :Bool = true;
  other @12 :Bool;
  name @13 :Text = "unnamed";
  blob @14 :Data = 0x"cafe";
  genre @15 :Genre = horror;
  nothing @16 :Void;
  tags @17 :List(Text);
  counts @18 :List(UInt32) = [7, 8, 9];
  bigs @19 :List(Int64);
  u64s @20 :List(UInt64);
  i8s @21 :List(Int8);
  ratios @22 :List(Float32);
  f64s @23 :List(Float64);
  bits @24 :List(Bool);
  genres @25 :List(Genre);
  blobs @26 :List(Data);
  matrix @27 :List(List(Int16));
  spot @28 :Point;
  lead @29 :Credit;
  credits @30 :List(Credit);
  plain @31 :Text;
}

struct Label {
  code @0 :Text;
  weight @1 :Float64 = 1;
  parts @2 :List(Point);
  note @3 :Data;
}
