/* 8 forked processes x 2000 increments of one counter under rctdb_chainlock end at exactly
 * 16000. Usage: multiprocess DIR */
#include "check.h"

#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

#define CHILDREN 8
#define INCREMENTS 2000

static void increment(struct rctdb_context *db, TDB_DATA key)
{
	uint32_t value = 0;
	CHECK(rctdb_chainlock(db, key) == 0);
	TDB_DATA old = rctdb_fetch(db, key);
	if (old.dptr != NULL) {
		CHECK(old.dsize == sizeof(value));
		memcpy(&value, old.dptr, sizeof(value));
		free(old.dptr);
	}
	value++;
	TDB_DATA new_value = { (unsigned char *)&value, sizeof(value) };
	CHECK(rctdb_store(db, key, new_value, TDB_REPLACE) == 0);
	CHECK(rctdb_chainunlock(db, key) == 0);
}

int main(int argc, char **argv)
{
	char path[4096];
	CHECK(argc == 2);
	join(path, sizeof(path), argv[1], "counter.tdb");
	TDB_DATA key = string_data("counter");

	/* Create the file first, so that the children only open it. */
	struct rctdb_context *db = rctdb_open(path, 0, 0, O_RDWR | O_CREAT, 0600);
	CHECK(db != NULL);
	CHECK(rctdb_close(db) == 0);

	pid_t children[CHILDREN];
	for (int i = 0; i < CHILDREN; i++) {
		children[i] = fork();
		CHECK(children[i] >= 0);
		if (children[i] == 0) {
			/* fcntl locks are per process: each child needs its own open. */
			struct rctdb_context *mine = rctdb_open(path, 0, 0, O_RDWR, 0600);
			CHECK(mine != NULL);
			for (int n = 0; n < INCREMENTS; n++) {
				increment(mine, key);
			}
			CHECK(rctdb_close(mine) == 0);
			_exit(0);
		}
	}
	for (int i = 0; i < CHILDREN; i++) {
		int status;
		CHECK(waitpid(children[i], &status, 0) == children[i]);
		CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	}

	db = rctdb_open(path, 0, 0, O_RDWR, 0600);
	CHECK(db != NULL);
	TDB_DATA total = rctdb_fetch(db, key);
	uint32_t value;
	CHECK(total.dptr != NULL && total.dsize == sizeof(value));
	memcpy(&value, total.dptr, sizeof(value));
	free(total.dptr);
	CHECK(rctdb_close(db) == 0);
	printf("multiprocess: counter = %u\n", value);
	CHECK(value == CHILDREN * INCREMENTS);
	return 0;
}
