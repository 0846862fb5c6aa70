/* The LMASTER of a key, as ctdbd and rctdbd compute it: vnn_map[tdb_jenkins_hash(key) % len].
 * Build: gcc -O2 lmaster.c -o lmaster -ltdb      Use: lmaster KEY PNN...  (the vnn map) */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <fcntl.h>
#include <tdb.h>

int main(int argc, char **argv) {
	if (argc < 3) { fprintf(stderr, "usage: lmaster KEY PNN...\n"); return 2; }
	TDB_DATA key = {(unsigned char *)argv[1], strlen(argv[1])};
	unsigned int hash = tdb_jenkins_hash(&key);
	printf("%s\n", argv[2 + hash % (unsigned)(argc - 2)]);
	return 0;
}
