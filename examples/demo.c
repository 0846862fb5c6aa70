/* A small tour of the rctdb C API, on a file of "open files" as Samba's opendb might keep
 * them. Build: gcc -Iinclude demo.c -Ltarget/release -lrctdb. Usage: demo FILE.tdb */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rctdb.h"

static TDB_DATA text(const char *s)
{
	TDB_DATA d = { (unsigned char *)s, strlen(s) };
	return d;
}

static int show(struct rctdb_context *db, TDB_DATA key, TDB_DATA data, void *private_data)
{
	(void)db;
	(void)private_data;
	printf("  %.*s -> %.*s\n", (int)key.dsize, (char *)key.dptr, (int)data.dsize, (char *)data.dptr);
	return 0; /* non-zero would stop the traverse */
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s FILE.tdb\n", argv[0]);
		return 2;
	}
	/* The same arguments as tdb_open. Unclustered (RCTDB_SOCKET unset) this is a plain tdb. */
	struct rctdb_context *db = rctdb_open(argv[1], 0, 0, O_RDWR | O_CREAT, 0600);
	if (db == NULL) {
		fprintf(stderr, "rctdb_open: %s\n", rctdb_open_error());
		return 1;
	}

	rctdb_store(db, text("/srv/share/report.odt"), text("pid 4711, read+write"), TDB_INSERT);
	rctdb_store(db, text("/srv/share/notes.txt"), text("pid 4712, read"), TDB_INSERT);

	/* Inserting a key that exists fails, and the context says exactly why. */
	if (rctdb_store(db, text("/srv/share/notes.txt"), text("pid 9"), TDB_INSERT) != 0) {
		printf("insert again: error %d: %s\n", (int)rctdb_error(db), rctdb_errorstr(db));
	}

	/* Read-modify-write under the chain lock, as smbd does: no other process can interleave. */
	TDB_DATA key = text("/srv/share/report.odt");
	rctdb_chainlock(db, key);
	TDB_DATA old = rctdb_fetch(db, key); /* malloc'd: the caller frees it */
	printf("before: %.*s\n", (int)old.dsize, (char *)old.dptr);
	free(old.dptr);
	rctdb_store(db, key, text("pid 4711, read+write; pid 4713, read"), TDB_MODIFY);
	rctdb_chainunlock(db, key);

	printf("all records:\n");
	int count = rctdb_traverse(db, show, NULL);
	printf("(%d records)\n", count);
	return rctdb_close(db) == 0 ? 0 : 1;
}
