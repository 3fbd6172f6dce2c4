# A small record type for the overlay property tests (tests/test_overlay.py).
@0xb7e1c9a8d2f3e4a5;

struct Item {
  id @0 :UInt32;
  name @1 :Text;
  group @2 :Text;
  n @3 :Int64;
  tags @4 :List(Text);
  code @5 :Text;
}
