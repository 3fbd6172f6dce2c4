# The world's airports, from the airportsdata package (28,000 records):
# the example namespace hollowd serves out of the box. Keyed by ICAO code,
# with a secondary index on country.
@0xc7f2a4e6b8d01359;

struct Airport {
  icao @0 :Text;         # primary key, e.g. "NZAA"
  iata @1 :Text;         # "AKL", or empty
  name @2 :Text;
  city @3 :Text;
  subdivision @4 :Text;  # state, province, region
  country @5 :Text;      # ISO 3166-1 alpha-2, e.g. "NZ"
  elevationFeet @6 :Float32;
  latitude @7 :Float64;
  longitude @8 :Float64;
  timezone @9 :Text;     # IANA, e.g. "Pacific/Auckland"
  lid @10 :Text;         # FAA location identifier (US), or empty
}
