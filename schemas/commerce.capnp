# Commerce orders: composite keys, enums and nested lists of structs.
@0xb2c6d0a1f3e5a7c9;

enum OrderStatus {
  pending @0;
  paid @1;
  shipped @2;
  delivered @3;
  cancelled @4;
}

struct Money {
  currency @0 :Text;     # ISO 4217
  minorUnits @1 :Int64;  # cents, pence, ...
}

struct LineItem {
  sku @0 :Text;
  quantity @1 :UInt32;
  unitPrice @2 :Money;
}

struct Order {
  id @0 :UInt64;
  customerId @1 :UInt64;
  status @2 :OrderStatus;
  placedAtMillis @3 :Int64;
  items @4 :List(LineItem);
  total @5 :Money;
  giftWrap @6 :Bool;
}

struct Customer {
  id @0 :UInt64;
  email @1 :Text;
  country @2 :Text;
}

struct Price {
  sku @0 :Text;
  currency @1 :Text;
  amount @2 :Money;
}
