/*
 * routing.c: which databases go to rctdb.
 *
 * RCTDB_SAMBA_DBS lists database file names (the last path component), separated by
 * commas, colons or spaces. Unset: locking.tdb and brlock.tdb, the databases every open
 * and byte-range lock changes. Set but empty: none. Read once, at the first open.
 */

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "preload.h"

#define ROUTED_DBS_ENV "RCTDB_SAMBA_DBS"
#define ROUTED_DBS_DEFAULT "locking.tdb,brlock.tdb"
#define MAX_ROUTED 32

static char *routed_names[MAX_ROUTED];
static size_t num_routed;
static pthread_once_t routing_once = PTHREAD_ONCE_INIT;

static void routing_load(void)
{
	const char *env = getenv(ROUTED_DBS_ENV);
	char *list = strdup(env != NULL ? env : ROUTED_DBS_DEFAULT);
	char *save = NULL;

	if (list == NULL) {
		preload_log(NULL, TDB_DEBUG_FATAL, "out of memory reading %s: routing nothing",
			    ROUTED_DBS_ENV);
		return;
	}
	for (char *name = strtok_r(list, ", :\t\n", &save); name != NULL;
	     name = strtok_r(NULL, ", :\t\n", &save)) {
		if (num_routed == MAX_ROUTED) {
			preload_log(NULL, TDB_DEBUG_ERROR, "%s names more than %d databases: %s and "
				    "later ones stay with libtdb", ROUTED_DBS_ENV, MAX_ROUTED, name);
			break;
		}
		routed_names[num_routed++] = name;
	}
	/* `list` stays allocated: routed_names point into it. */
}

bool routing_wants(const char *name, int tdb_flags)
{
	const char *base;

	/* An in-memory tdb is private to the process, whatever its name. */
	if (name == NULL || (tdb_flags & TDB_INTERNAL) != 0) {
		return false;
	}
	pthread_once(&routing_once, routing_load);
	base = strrchr(name, '/');
	base = base == NULL ? name : base + 1;
	for (size_t i = 0; i < num_routed; i++) {
		if (strcmp(base, routed_names[i]) == 0) {
			return true;
		}
	}
	return false;
}
