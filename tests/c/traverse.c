/* rctdb_traverse: counting, visiting, stopping early, deleting while traversing. Usage: traverse DIR */
#include "check.h"

#define RECORDS 100

struct visit {
	int seen;
	int stop_after;
	long key_sum;
};

static int visit(struct rctdb_context *db, TDB_DATA key, TDB_DATA data, void *private_data)
{
	struct visit *v = private_data;
	int n;
	(void)db;
	CHECK(key.dsize == sizeof(n) && data.dsize == 5);
	memcpy(&n, key.dptr, sizeof(n));
	v->key_sum += n;
	v->seen++;
	return v->stop_after > 0 && v->seen >= v->stop_after;
}

static int delete_odd(struct rctdb_context *db, TDB_DATA key, TDB_DATA data, void *private_data)
{
	int n;
	(void)data;
	(void)private_data;
	memcpy(&n, key.dptr, sizeof(n));
	if (n % 2 == 1) {
		CHECK(rctdb_delete(db, key) == 0);
	}
	return 0;
}

int main(int argc, char **argv)
{
	char path[4096];
	CHECK(argc == 2);
	struct rctdb_context *db = rctdb_open(join(path, sizeof(path), argv[1], "traverse.tdb"), 0, 0,
					      O_RDWR | O_CREAT, 0600);
	CHECK(db != NULL);
	CHECK(rctdb_traverse(db, NULL, NULL) == 0);

	for (int i = 0; i < RECORDS; i++) {
		TDB_DATA key = { (unsigned char *)&i, sizeof(i) };
		CHECK(rctdb_store(db, key, string_data("value"), TDB_INSERT) == 0);
	}
	CHECK(rctdb_traverse(db, NULL, NULL) == RECORDS);

	struct visit all = { 0, 0, 0 };
	CHECK(rctdb_traverse(db, visit, &all) == RECORDS);
	CHECK(all.seen == RECORDS && all.key_sum == RECORDS * (RECORDS - 1) / 2);

	/* A non-zero return stops the traverse; the stopping record is counted. */
	struct visit ten = { 0, 10, 0 };
	CHECK(rctdb_traverse(db, visit, &ten) == 10);
	CHECK(ten.seen == 10);

	CHECK(rctdb_traverse(db, delete_odd, NULL) == RECORDS);
	CHECK(rctdb_traverse(db, NULL, NULL) == RECORDS / 2);
	CHECK(rctdb_close(db) == 0);
	printf("traverse: ok\n");
	return 0;
}
