@0xa1b2c3d4e5f60718;

struct Movie {
  id @0 :UInt64;
  title @1 :Text;
  year @2 :UInt16;
  rating @3 :Float32;
  genre @4 :Text;
  tags @5 :List(Text);
}
