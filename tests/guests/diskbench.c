/*
 * diskbench: the guest side of `cargo xtask bench-devices` (docs/PERFORMANCE.md).
 * A static arm64 Linux program, built into the root disk by tests/make-rootdisk.sh
 * (not one of the bare-metal testbed programs beside it).
 *
 *   diskbench DEVICE MIB SECONDS
 *
 * On DEVICE, with O_DIRECT and 1 MiB blocks: writes MIB MiB sequentially, reads them
 * back sequentially, then reads random 4 KiB blocks inside those MIB MiB for SECONDS
 * seconds, one at a time (queue depth 1). Prints, one line each:
 *
 *   VMM-BENCH: seq-write <MiB/s>
 *   VMM-BENCH: seq-read <MiB/s>
 *   VMM-BENCH: rand-read-4k <IOPS>
 *
 * or "VMM-BENCH: error <what>" and exits 1.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BLOCK (1 << 20)
#define SMALL 4096

static void fail(const char *what)
{
	printf("VMM-BENCH: error %s\n", what);
	exit(1);
}

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc != 4)
		fail("usage: diskbench DEVICE MIB SECONDS");
	long mib = atol(argv[2]);
	double secs = atof(argv[3]);
	if (mib <= 0 || secs <= 0)
		fail("MIB and SECONDS must be positive");
	int fd = open(argv[1], O_RDWR | O_DIRECT);
	if (fd < 0)
		fail("open O_DIRECT");
	char *buf;
	if (posix_memalign((void **)&buf, SMALL, BLOCK) != 0)
		fail("posix_memalign");
	memset(buf, 0x5a, BLOCK);

	double t0 = now();
	for (long i = 0; i < mib; i++)
		if (pwrite(fd, buf, BLOCK, (off_t)i * BLOCK) != BLOCK)
			fail("pwrite");
	if (fdatasync(fd) != 0)
		fail("fdatasync");
	double t1 = now();
	printf("VMM-BENCH: seq-write %.1f\n", mib / (t1 - t0));
	fflush(stdout);

	for (long i = 0; i < mib; i++)
		if (pread(fd, buf, BLOCK, (off_t)i * BLOCK) != BLOCK)
			fail("pread");
	double t2 = now();
	printf("VMM-BENCH: seq-read %.1f\n", mib / (t2 - t1));
	fflush(stdout);

	uint64_t x = 0x9e3779b97f4a7c15ull, blocks = (uint64_t)mib * (BLOCK / SMALL), n = 0;
	double end = t2 + secs, t = t2;
	while (t < end) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		if (pread(fd, buf, SMALL, (off_t)(x % blocks) * SMALL) != SMALL)
			fail("pread 4k");
		n++;
		if ((n & 15) == 0)
			t = now();
	}
	t = now();
	printf("VMM-BENCH: rand-read-4k %.0f\n", n / (t - t2));
	close(fd);
	return 0;
}
