/* The C API on a clustered database, across the nodes of a 3-node cluster: create on one
 * node, read on another, delete on a third; store flags, chain locks, parse, storev,
 * seqnum, traverse (every record of the cluster once, newest copy) and read-only opens.
 * Usage: cluster_crud SOCKET0 SOCKET1 SOCKET2
 */
#include "check.h"

#define NODES 3

static const char *sockets[NODES];

/* Opens `name` on `node` (RCTDB_SOCKET picks the node). */
static struct rctdb_context *open_on(int node, const char *name, int tdb_flags, int open_flags)
{
	CHECK(setenv("RCTDB_SOCKET", sockets[node], 1) == 0);
	struct rctdb_context *db = rctdb_open(name, 0, tdb_flags, open_flags, 0600);
	if (db == NULL) {
		fprintf(stderr, "cannot open %s on node %d: %s\n", name, node, rctdb_open_error());
		exit(1);
	}
	CHECK(strcmp(rctdb_open_error(), "") == 0);
	return db;
}

static void check_value(struct rctdb_context *db, const char *key, const char *expected)
{
	TDB_DATA got = rctdb_fetch(db, string_data(key));
	if (!data_equals(got, expected)) {
		fprintf(stderr, "%s: expected \"%s\", got %.*s (%s)\n", key, expected, (int)got.dsize,
			got.dptr ? (char *)got.dptr : "NULL", rctdb_errorstr(db));
		exit(1);
	}
	free(got.dptr);
}

static void check_absent(struct rctdb_context *db, const char *key)
{
	TDB_DATA got = rctdb_fetch(db, string_data(key));
	CHECK(got.dptr == NULL && got.dsize == 0);
	CHECK_ERR(db, TDB_ERR_NOEXIST, "no record");
	CHECK(rctdb_exists(db, string_data(key)) == 0);
}

static int copy_record(TDB_DATA key, TDB_DATA data, void *private_data)
{
	(void)key;
	snprintf(private_data, 64, "%.*s", (int)data.dsize, (const char *)data.dptr);
	return 42;
}

static void crud(struct rctdb_context *n[NODES])
{
	const char *k = "greeting";
	TDB_DATA key = string_data(k);
	for (int i = 0; i < NODES; i++)
		check_absent(n[i], k);

	/* Written on node 0, read on node 2; the flags see the record wherever it is. */
	CHECK(rctdb_store(n[0], key, string_data("hello"), TDB_INSERT) == 0);
	check_value(n[2], k, "hello");
	CHECK(rctdb_exists(n[1], key) == 1);
	CHECK(rctdb_store(n[1], key, string_data("other"), TDB_INSERT) == -1);
	CHECK_ERR(n[1], TDB_ERR_EXISTS, "TDB_INSERT");
	CHECK(rctdb_store(n[1], key, string_data("hello, world"), TDB_MODIFY) == 0);
	CHECK(rctdb_store(n[2], string_data("absent"), string_data("x"), TDB_MODIFY) == -1);
	CHECK_ERR(n[2], TDB_ERR_NOEXIST, "TDB_MODIFY");
	check_value(n[0], k, "hello, world");

	/* The parser sees the data without the record header. */
	char seen[64] = "";
	CHECK(rctdb_parse_record(n[2], key, copy_record, seen) == 42);
	CHECK(strcmp(seen, "hello, world") == 0);
	CHECK(rctdb_parse_record(n[1], string_data("absent"), copy_record, seen) == -1);
	CHECK_ERR(n[1], TDB_ERR_NOEXIST, "no record");

	/* storev joins its parts; 0 is tdb's old spelling of replace. */
	TDB_DATA parts[3] = { string_data("ab"), { NULL, 0 }, string_data("cd") };
	CHECK(rctdb_storev(n[2], string_data("joined"), parts, 3, TDB_REPLACE) == 0);
	check_value(n[0], "joined", "abcd");
	CHECK(rctdb_store(n[0], string_data("zero"), string_data("flag 0"), 0) == 0);
	CHECK(rctdb_store(n[1], string_data("zero"), string_data("replaced"), TDB_REPLACE) == 0);
	check_value(n[2], "zero", "replaced");

	/* Deleted on node 1: absent everywhere. */
	CHECK(rctdb_delete(n[1], key) == 0);
	for (int i = 0; i < NODES; i++)
		check_absent(n[i], k);
	CHECK(rctdb_delete(n[2], key) == -1);
	CHECK_ERR(n[2], TDB_ERR_NOEXIST, "no record");
	CHECK(rctdb_store(n[0], key, string_data("x"), TDB_MODIFY) == -1);
	CHECK_ERR(n[0], TDB_ERR_NOEXIST, "TDB_MODIFY");
	/* A deleted record counts as absent for TDB_INSERT too. */
	CHECK(rctdb_store(n[2], key, string_data("again"), TDB_INSERT) == 0);
	check_value(n[1], k, "again");

	/* An empty record is a deleted one: storing empty data deletes. */
	TDB_DATA empty = { NULL, 0 };
	CHECK(rctdb_store(n[0], key, empty, TDB_REPLACE) == 0);
	for (int i = 0; i < NODES; i++)
		check_absent(n[i], k);
}

static void locks(struct rctdb_context *n[NODES])
{
	const char *k = "locked";
	TDB_DATA key = string_data(k);

	/* Under the chain lock the record is here and stays here; locks nest. */
	CHECK(rctdb_chainlock(n[1], key) == 0);
	CHECK(rctdb_store(n[1], key, string_data("under lock"), TDB_REPLACE) == 0);
	check_value(n[1], k, "under lock");
	CHECK(rctdb_chainlock(n[1], key) == 0);
	CHECK(rctdb_chainunlock(n[1], key) == 0);
	CHECK(rctdb_exists(n[1], key) == 1);
	CHECK(rctdb_chainunlock(n[1], key) == 0);
	CHECK(rctdb_chainunlock(n[1], key) == -1);
	CHECK_ERR(n[1], TDB_ERR_LOCK, "does not hold");

	/* Non-blocking: only where the record is; it never migrates the record. */
	CHECK(rctdb_chainlock_nonblock(n[1], key) == 0);
	CHECK(rctdb_chainunlock(n[1], key) == 0);
	CHECK(rctdb_chainlock_nonblock(n[2], key) == -1);
	CHECK_ERR(n[2], TDB_ERR_LOCK, "not on node");
	CHECK(rctdb_chainlock_nonblock(n[1], key) == 0);
	CHECK(rctdb_chainunlock(n[1], key) == 0);

	/* A blocking chain lock brings it over. */
	CHECK(rctdb_chainlock(n[2], key) == 0);
	check_value(n[2], k, "under lock");
	CHECK(rctdb_chainunlock(n[2], key) == 0);
	CHECK(rctdb_chainlock_nonblock(n[1], key) == -1);
	CHECK_ERR(n[1], TDB_ERR_LOCK, "does not migrate");
	CHECK(rctdb_chainlock_nonblock(n[2], key) == 0);
	CHECK(rctdb_chainunlock(n[2], key) == 0);
}

static void seqnum(void)
{
	struct rctdb_context *db = open_on(0, "seqnum.tdb", TDB_SEQNUM, O_RDWR | O_CREAT);
	int before = rctdb_get_seqnum(db);
	CHECK(rctdb_store(db, string_data("k"), string_data("v"), TDB_REPLACE) == 0);
	CHECK(rctdb_get_seqnum(db) > before);
	CHECK(rctdb_close(db) == 0);
}

#define PER_NODE 20
#define TRAVERSE_RECORDS (NODES * PER_NODE + 1) /* plus "shared" */

struct visits {
	int count[NODES][PER_NODE];
	int shared;
	int other;
	int stop_after;
	int calls;
	const char *suffix;
};

static int visit(struct rctdb_context *db, TDB_DATA key, TDB_DATA data, void *private_data)
{
	struct visits *v = private_data;
	char k[64], expected[80];
	int node, i;
	(void)db;
	v->calls++;
	snprintf(k, sizeof(k), "%.*s", (int)key.dsize, (const char *)key.dptr);
	if (strcmp(k, "shared") == 0) {
		v->shared++;
		snprintf(expected, sizeof(expected), "newest%s", v->suffix);
	} else if (sscanf(k, "n%d-%d", &node, &i) == 2 && node >= 0 && node < NODES && i >= 0 && i < PER_NODE) {
		v->count[node][i]++;
		snprintf(expected, sizeof(expected), "value %d-%d%s", node, i, v->suffix);
	} else {
		fprintf(stderr, "traverse visited an unexpected key %s\n", k);
		v->other++;
		return 0;
	}
	if (!data_equals(data, expected)) {
		fprintf(stderr, "traverse: %s = %.*s, expected %s\n", k, (int)data.dsize, (const char *)data.dptr,
			expected);
		exit(1);
	}
	return v->stop_after > 0 && v->calls >= v->stop_after;
}

/* Appends "!" to each record, through the traversed context itself. */
static int append(struct rctdb_context *db, TDB_DATA key, TDB_DATA data, void *private_data)
{
	char value[96];
	(void)private_data;
	snprintf(value, sizeof(value), "%.*s!", (int)data.dsize, (const char *)data.dptr);
	CHECK(rctdb_store(db, key, string_data(value), TDB_MODIFY) == 0);
	TDB_DATA got = rctdb_fetch(db, key);
	CHECK(data_equals(got, value));
	free(got.dptr);
	return 0;
}

static void check_visits(const struct visits *v)
{
	CHECK(v->other == 0);
	CHECK(v->shared == 1);
	for (int node = 0; node < NODES; node++)
		for (int i = 0; i < PER_NODE; i++)
			CHECK(v->count[node][i] == 1);
}

static void traverse(void)
{
	struct rctdb_context *n[NODES];
	char k[64], value[64];
	for (int node = 0; node < NODES; node++)
		n[node] = open_on(node, "traverse.tdb", 0, O_RDWR | O_CREAT);
	for (int node = 0; node < NODES; node++) {
		for (int i = 0; i < PER_NODE; i++) {
			snprintf(k, sizeof(k), "n%d-%d", node, i);
			snprintf(value, sizeof(value), "value %d-%d", node, i);
			CHECK(rctdb_store(n[node], string_data(k), string_data(value), TDB_INSERT) == 0);
		}
	}
	/* Copies of "shared" are left on nodes 0 and 2; node 1 has the newest. */
	CHECK(rctdb_store(n[0], string_data("shared"), string_data("old"), TDB_INSERT) == 0);
	CHECK(rctdb_store(n[2], string_data("shared"), string_data("newer"), TDB_MODIFY) == 0);
	CHECK(rctdb_store(n[1], string_data("shared"), string_data("newest"), TDB_MODIFY) == 0);
	/* Deleted records are not visited. */
	CHECK(rctdb_store(n[0], string_data("gone"), string_data("x"), TDB_INSERT) == 0);
	CHECK(rctdb_delete(n[2], string_data("gone")) == 0);

	for (int from = 0; from < NODES; from++) {
		struct visits v = { .suffix = "" };
		CHECK(rctdb_traverse(n[from], visit, &v) == TRAVERSE_RECORDS);
		check_visits(&v);
	}
	CHECK(rctdb_traverse(n[2], NULL, NULL) == TRAVERSE_RECORDS);
	/* Not under a chain lock of this context: every node must read every chain for it. */
	CHECK(rctdb_chainlock(n[2], string_data("n2-0")) == 0);
	CHECK(rctdb_traverse(n[2], NULL, NULL) == -1);
	CHECK_ERR(n[2], TDB_ERR_LOCK, "chainunlock first");
	CHECK(rctdb_chainunlock(n[2], string_data("n2-0")) == 0);
	struct visits stopped = { .suffix = "", .stop_after = 5 };
	CHECK(rctdb_traverse(n[1], visit, &stopped) == 5);
	CHECK(stopped.calls == 5);

	/* The callback may store and fetch through the same context (records migrate to node 0). */
	CHECK(rctdb_traverse(n[0], append, NULL) == TRAVERSE_RECORDS);
	struct visits after = { .suffix = "!" };
	CHECK(rctdb_traverse(n[2], visit, &after) == TRAVERSE_RECORDS);
	check_visits(&after);
	check_value(n[1], "n2-7", "value 2-7!");

	for (int node = 0; node < NODES; node++)
		CHECK(rctdb_close(n[node]) == 0);
}

static void read_only(void)
{
	struct rctdb_context *db = open_on(2, "crud.tdb", 0, O_RDONLY);
	check_value(db, "zero", "replaced");
	CHECK(rctdb_exists(db, string_data("joined")) == 1);
	CHECK(rctdb_store(db, string_data("zero"), string_data("w"), TDB_REPLACE) == -1);
	CHECK_ERR(db, TDB_ERR_RDONLY, "read-only");
	TDB_DATA part = string_data("w");
	CHECK(rctdb_storev(db, string_data("zero"), &part, 1, TDB_REPLACE) == -1);
	CHECK_ERR(db, TDB_ERR_RDONLY, "read-only");
	CHECK(rctdb_delete(db, string_data("zero")) == -1);
	CHECK_ERR(db, TDB_ERR_RDONLY, "read-only");
	check_value(db, "zero", "replaced");
	CHECK(rctdb_close(db) == 0);
}

int main(int argc, char **argv)
{
	CHECK(argc == 1 + NODES);
	struct rctdb_context *n[NODES];
	for (int i = 0; i < NODES; i++)
		sockets[i] = argv[1 + i];
	/* Any path: the database is its last component. */
	n[0] = open_on(0, "crud.tdb", 0, O_RDWR | O_CREAT);
	n[1] = open_on(1, "/var/lib/somewhere/crud.tdb", TDB_CLEAR_IF_FIRST, O_RDWR);
	n[2] = open_on(2, "relative/crud.tdb", 0, O_RDWR | O_CREAT);
	crud(n);
	locks(n);
	for (int i = 0; i < NODES; i++)
		CHECK(rctdb_close(n[i]) == 0);
	seqnum();
	traverse();
	read_only();
	printf("cluster_crud: ok\n");
	return 0;
}
