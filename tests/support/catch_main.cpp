// The Catch2 2.x main, compiled once for every test binary (3.x brings Catch2WithMain).
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
