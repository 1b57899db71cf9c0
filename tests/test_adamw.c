#include "harness.h"
int main(void) { CHECK(1, "x"); return test_finish("test_adamw"); }
