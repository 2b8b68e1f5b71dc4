/*
 * stale-code: does the guest execute code that a virtio-blk read put into a page it
 * has already run? A static arm64 Linux program for the root disk guest
 * (tests/make-rootdisk.sh builds it into the image as /bin/stale-code; docs/e2e.md,
 * "Root disk guests"). Not one of the bare-metal testbed guests: `cargo xtask
 * build-guests` assembles only the .S files here.
 *
 *   stale-code DISK          e.g. stale-code /dev/vdb
 *
 * DISK must hold code v2 (mov w0, #2; ret) in its first 8 bytes. The program
 *   1. maps one page, writes code v1 (mov w0, #1; ret), makes it R+X, cleans the
 *      caches and calls it 100 times (QEMU's TCG translates it), and prints
 *        VMM-E2E: stale-code first 1
 *   2. makes the page writable again and reads DISK's first 4096 bytes into that same
 *      page with O_DIRECT (the disk's DMA writes the page; the CPU does not), makes it
 *      R+X, cleans the caches, calls it and prints
 *        VMM-E2E: stale-code then 2          (1: the CPU ran the old, stale code)
 * Any failure prints "VMM-E2E: stale-code error <what>" and exits 1.
 *
 * Encodings (aarch64-linux-gnu-as, then objdump -d):
 *   52800020   mov w0, #1
 *   52800040   mov w0, #2
 *   d65f03c0   ret
 * On the disk, little-endian: 40 00 80 52 c0 03 5f d6.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096
#define MOV_W0_1 0x52800020u
#define MOV_W0_2 0x52800040u
#define RET 0xd65f03c0u

static void fail(const char *what)
{
	printf("VMM-E2E: stale-code error %s\n", what);
	exit(1);
}

/* Makes the page executable (read-only), cleans the data and instruction caches over
 * it and returns it as a function. */
static int (*executable(uint32_t *page))(void)
{
	if (mprotect(page, PAGE, PROT_READ | PROT_EXEC) != 0)
		fail("mprotect r-x");
	__builtin___clear_cache((char *)page, (char *)page + PAGE);
	return (int (*)(void))page;
}

/*
 * Calls fn ROUNDS times and returns what it returned if every call agreed with
 * `expect`, else the first other value. The calls alternate between right after a
 * system call, right after floating-point work and plain: TCG keys its translations by
 * CPU state as well as address (the hypervisor's lazy FP/SIMD trap, for one, changes
 * it), so a stale translation is only found again in the state it was made in; this
 * makes translations in each state and then looks for them in each state.
 */
#define ROUNDS 300
static int run(int (*fn)(void), int expect)
{
	volatile double x = 1.0;
	int got = expect;
	for (int i = 0; i < ROUNDS; i++) {
		if (i % 3 == 0)
			(void)getppid();
		else if (i % 3 == 1)
			x = x * 1.5 + 0.25;
		int r = fn();
		if (r != expect && got == expect)
			got = r;
	}
	return got;
}

int main(int argc, char **argv)
{
	if (argc != 2)
		fail("usage: stale-code DISK");
	if (sysconf(_SC_PAGESIZE) != PAGE)
		fail("page size is not 4096");

	uint32_t *page = mmap(NULL, PAGE, PROT_READ | PROT_WRITE,
			      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (page == MAP_FAILED)
		fail("mmap");

	/* v1, written by the CPU. */
	page[0] = MOV_W0_1;
	page[1] = RET;
	int (*fn)(void) = executable(page);
	int first = run(fn, 1);
	printf("VMM-E2E: stale-code first %d\n", first);
	fflush(stdout);

	/* v2, written into the same page by the disk (DMA), not by the CPU. */
	if (mprotect(page, PAGE, PROT_READ | PROT_WRITE) != 0)
		fail("mprotect rw-");
	int fd = open(argv[1], O_RDONLY | O_DIRECT);
	if (fd < 0)
		fail("open O_DIRECT");
	if (pread(fd, page, PAGE, 0) != PAGE)
		fail("pread 4096 bytes at 0");
	close(fd);
	if (page[0] != MOV_W0_2 || page[1] != RET)
		fail("disk does not start with mov w0, #2; ret");

	fn = executable(page);
	printf("VMM-E2E: stale-code then %d\n", run(fn, 2));
	return 0;
}
