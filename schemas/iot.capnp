# IoT metrics: devices and their latest readings, keyed by (device, metric).
@0xe3a1c5b7d9f20468;

struct Device {
  serial @0 :Text;
  model @1 :Text;
  site @2 :Text;
  firmware @3 :UInt32;
  online @4 :Bool;
}

struct Reading {
  deviceSerial @0 :Text;
  metric @1 :Text;
  atMillis @2 :Int64;
  value @3 :Float64;
  samples @4 :List(Float32);
}
