# The guest's parallel-build workload: Mbed TLS (Debian bookworm's mbedtls source)
# compiled with tcc, one object per C file, the library objects archived.
#
#   make -f build.mk -C SRC -j8      SRC holds include/ library/ programs/ tests/include/
#   make -f build.mk -C SRC clean
#
# No configure step and no linking: the work is the compiles, independent of each
# other, so `-j` decides how many run at once. build-source.sh runs it once on the
# host to check every unit compiles, and asks it for the units (`make units`).

CC       := tcc
CPPFLAGS := -Iinclude -Ilibrary -Itests/include
# Fragments that other programs #include, not units of their own.
NOT_UNITS := programs/psa/psa_constant_names_generated.c programs/ssl/ssl_test_common_source.c

LIB_OBJS  := $(patsubst %.c,%.o,$(wildcard library/*.c))
PROG_OBJS := $(patsubst %.c,%.o,$(filter-out $(NOT_UNITS),$(wildcard programs/*/*.c)))

.PHONY: all units clean

all: library/libmbedtls-all.a $(PROG_OBJS)

library/libmbedtls-all.a: $(LIB_OBJS)
	$(CC) -ar rcs $@ $^

%.o: %.c
	$(CC) $(CPPFLAGS) -c $< -o $@

units:
	@echo $(LIB_OBJS:.o=.c) $(PROG_OBJS:.o=.c)

clean:
	rm -f library/*.o library/*.a programs/*/*.o
