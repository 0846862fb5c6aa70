/* tdb.h uses these types without including their headers. */
#include <sys/types.h>
#include <stdint.h>
#include <stdbool.h>
#include <fcntl.h>
#include <tdb.h>
