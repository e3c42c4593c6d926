"""The functions a gateway query may call: an allow-list of ClickHouse names, plus which
arguments of them must be bounded constants.

Everything not listed here is rejected, so a function ClickHouse adds in a new release is
unavailable until someone reads what it does. Left out on purpose, by family: anything that
reads or writes outside the query's own rows (``file``, ``url``, ``s3``, ``remote``,
``dictGet*``, ``joinGet``, ``hasColumnInTable``, ``getSetting``, ``currentUser``,
``hostName``, ``filesystem*``, ``getMacro``, ...), anything that waits or throws on purpose
(``sleep``, ``sleepEachRow``, ``throwIf``), introspection, encryption, random generators
that build big values (``randomString``), ``arrayReduce``/``initializeAggregation`` (they
take an aggregate function's name as a string, which this list could not check), the
``-State``/``-Merge``/``-Resample`` combinators, and the function forms of ``IN``
(``in``, ``globalIn``, ...), whose right side ClickHouse may resolve as a table.
"""

from __future__ import annotations


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# --------------------------------------------------------------------------- scalars

_ARITHMETIC = """
plus minus multiply divide intDiv intDivOrZero modulo moduloOrZero positiveModulo negate abs
gcd lcm isFinite isInfinite isNaN ifNotFinite
equals notEquals less greater lessOrEquals greaterOrEquals and or not xor
if multiIf greatest least clamp
"""

_MATH = """
exp exp2 exp10 log ln log2 log10 log1p sqrt cbrt pow power sin cos tan asin acos atan atan2
sinh cosh tanh asinh acosh atanh sign pi e erf erfc hypot degrees radians sigmoid widthBucket
intExp2 intExp10 round roundBankers floor ceil ceiling trunc truncate roundToExp2 roundDown
"""

_CONVERSION = """
toInt8 toInt16 toInt32 toInt64 toInt128 toInt256 toUInt8 toUInt16 toUInt32 toUInt64
toUInt128 toUInt256 toFloat32 toFloat64 toDecimal32 toDecimal64 toDecimal128 toDecimal256
toInt8OrZero toInt16OrZero toInt32OrZero toInt64OrZero toUInt8OrZero toUInt16OrZero
toUInt32OrZero toUInt64OrZero toFloat32OrZero toFloat64OrZero
toInt8OrNull toInt16OrNull toInt32OrNull toInt64OrNull toUInt8OrNull toUInt16OrNull
toUInt32OrNull toUInt64OrNull toFloat32OrNull toFloat64OrNull
toDecimal32OrNull toDecimal64OrNull toDecimal128OrNull toDecimal32OrZero toDecimal64OrZero
toString toFixedString toBool toLowCardinality toNullable assumeNotNull toTypeName
toDate toDate32 toDateTime toDateTime64 toDateOrNull toDateOrZero toDateTimeOrNull
toDateTimeOrZero toDateTime64OrNull toDateTime64OrZero toUnixTimestamp
toUnixTimestamp64Second toUnixTimestamp64Milli toUnixTimestamp64Micro toUnixTimestamp64Nano
fromUnixTimestamp fromUnixTimestamp64Second fromUnixTimestamp64Milli fromUnixTimestamp64Micro
fromUnixTimestamp64Nano parseDateTimeBestEffort parseDateTimeBestEffortOrNull
parseDateTimeBestEffortOrZero parseDateTime64BestEffort parseDateTime64BestEffortOrNull
reinterpretAsUInt64 reinterpretAsInt64 reinterpretAsFloat64 reinterpretAsUInt128
reinterpretAsUInt32 reinterpretAsUInt8 reinterpretAsString
accurateCast accurateCastOrNull accurateCastOrDefault toDecimalString
toIntervalSecond toIntervalMinute toIntervalHour toIntervalDay toIntervalWeek
toIntervalMonth toIntervalQuarter toIntervalYear toIntervalMillisecond
"""

_DATES = """
now now64 today yesterday toYear toQuarter toMonth toDayOfYear toDayOfMonth toDayOfWeek
toHour toMinute toSecond toMillisecond toISOWeek toISOYear toWeek toYearWeek
toStartOfYear toStartOfISOYear toStartOfQuarter toStartOfMonth toMonday toStartOfWeek
toStartOfDay toStartOfHour toStartOfMinute toStartOfSecond toStartOfMillisecond
toStartOfFiveMinutes toStartOfTenMinutes toStartOfFifteenMinutes toStartOfInterval
toLastDayOfMonth toLastDayOfWeek toTimeZone toTimezone timeSlot dateDiff date_diff
dateTrunc date_trunc dateName monthName age addSeconds addMinutes addHours addDays addWeeks
addMonths addQuarters addYears addMilliseconds subtractSeconds subtractMinutes subtractHours
subtractDays subtractWeeks subtractMonths subtractQuarters subtractYears
subtractMilliseconds formatDateTime toYYYYMM toYYYYMMDD toYYYYMMDDhhmmss
toRelativeYearNum toRelativeQuarterNum toRelativeMonthNum toRelativeWeekNum
toRelativeDayNum toRelativeHourNum toRelativeMinuteNum toRelativeSecondNum
makeDate makeDate32 makeDateTime makeDateTime64 timezone timeZone serverTimezone
"""

_STRINGS = """
length lengthUTF8 char_length empty notEmpty lower upper lowerUTF8 upperUTF8 concat
concatWithSeparator substring substr substringUTF8 left right leftUTF8 rightUTF8 mid
trim trimBoth trimLeft trimRight ltrim rtrim startsWith endsWith startsWithUTF8 endsWithUTF8
position positionCaseInsensitive positionUTF8 positionCaseInsensitiveUTF8 locate instr
replaceOne replaceAll replace reverse reverseUTF8 format splitByChar splitByString
splitByWhitespace splitByNonAlpha arrayStringConcat base64Encode base64Decode
tryBase64Decode hex unhex bin toValidUTF8 isValidUTF8 countSubstrings
countSubstringsCaseInsensitive hasToken hasTokenCaseInsensitive multiSearchAny
multiSearchFirstIndex multiSearchAllPositions initcap initcapUTF8 firstLine
editDistance levenshteinDistance ngramDistance regexpQuoteMeta
repeat space leftPad rightPad leftPadUTF8 rightPadUTF8 lpad rpad
"""

_REGEX_AND_LIKE = """
match extract extractAll extractGroups extractAllGroupsHorizontal extractAllGroupsVertical
replaceRegexpOne replaceRegexpAll splitByRegexp countMatches countMatchesCaseInsensitive
regexpExtract like notLike ilike notILike
"""

_HASHES = """
cityHash64 sipHash64 sipHash128 xxHash32 xxHash64 xxh3 murmurHash2_64 murmurHash3_32
murmurHash3_64 murmurHash3_128 farmHash64 farmFingerprint64 halfMD5 intHash32 intHash64
MD5 SHA1 SHA224 SHA256 SHA512 javaHash CRC32
"""

_ARRAYS = """
array has hasAll hasAny hasSubstr indexOf countEqual arrayConcat arrayElement
arrayElementOrNull arraySlice arrayPushBack arrayPushFront arrayPopBack arrayPopFront
arrayResize arrayWithConstant range arrayMap arrayFilter arrayCount arrayExists arrayAll
arraySum arrayAvg arrayMin arrayMax arrayProduct arrayCumSum arrayCumSumNonNegative
arrayDifference arrayDistinct arrayEnumerate arrayEnumerateUniq arrayEnumerateDense
arrayReverse arraySort arrayReverseSort arrayPartialSort arrayUniq arrayJoin arrayFirst
arrayLast arrayFirstIndex arrayLastIndex arrayFirstOrNull arrayLastOrNull arrayFlatten
flatten arrayCompact arrayZip arrayIntersect arrayUnion arraySplit arrayReverseSplit
arrayFill arrayReverseFill arrayShiftLeft arrayShiftRight arrayRotateLeft arrayRotateRight
arrayRemove arrayExcept arrayDotProduct arrayTopK
emptyArrayString emptyArrayUInt64 emptyArrayInt64 emptyArrayFloat64
"""

_MAPS_TUPLES_NULLS = """
map mapKeys mapValues mapContains mapContainsKey mapContainsValue mapFilter mapApply
mapExists mapAll mapFromArrays mapAdd mapSubtract mapUpdate mapConcat mapSort
mapReverseSort tuple tupleElement untuple tupleNames
coalesce ifNull nullIf isNull isNotNull isZeroOrNull
"""

_JSON_URL_IP_MISC = """
JSONExtract JSONExtractString JSONExtractInt JSONExtractUInt JSONExtractFloat
JSONExtractBool JSONExtractRaw JSONExtractKeys JSONExtractArrayRaw JSONHas JSONLength
JSONType isValidJSON toJSONString simpleJSONExtractString simpleJSONExtractFloat
simpleJSONHas
domain domainWithoutWWW topLevelDomain protocol path pathFull queryString
extractURLParameter cutQueryString
IPv4NumToString IPv4StringToNum IPv6NumToString IPv6StringToNum toIPv4 toIPv6
toIPv4OrNull toIPv6OrNull isIPv4String isIPv6String isIPAddressInRange
bitAnd bitOr bitXor bitNot bitShiftLeft bitShiftRight bitCount bitTest
formatReadableSize formatReadableQuantity formatReadableTimeDelta formatReadableDecimalSize
transform materialize generateUUIDv4 rand rand64 randCanonical
"""

SCALAR_FUNCTIONS: frozenset[str] = _names(
    " ".join([_ARITHMETIC, _MATH, _CONVERSION, _DATES, _STRINGS, _REGEX_AND_LIKE, _HASHES,
              _ARRAYS, _MAPS_TUPLES_NULLS, _JSON_URL_IP_MISC])
)

# ------------------------------------------------------------------------ aggregates

AGGREGATE_FUNCTIONS: frozenset[str] = _names("""
count sum avg min max any anyLast anyHeavy argMin argMax avgWeighted
uniq uniqExact uniqCombined uniqCombined64 uniqHLL12 countDistinct
quantile quantiles quantileExact quantilesExact quantileExactLow quantileExactHigh
quantileExactWeighted quantilesExactWeighted quantileTDigest quantilesTDigest
quantileTDigestWeighted quantileTiming quantilesTiming quantileDD quantilesDD
quantileGK quantilesGK quantileBFloat16 quantileInterpolatedWeighted
median medianExact medianTDigest medianTiming
stddevPop stddevSamp stddevPopStable stddevSampStable varPop varSamp varPopStable
varSampStable covarPop covarSamp corr skewPop skewSamp kurtPop kurtSamp entropy
simpleLinearRegression rankCorr
groupArray groupArrayLast groupUniqArray groupArraySorted groupArrayMovingSum
groupArrayMovingAvg groupBitAnd groupBitOr groupBitXor groupConcat
topK topKWeighted histogram sumKahan sumWithOverflow sumMap minMap maxMap sumCount
deltaSum deltaSumTimestamp exponentialMovingAverage singleValueOrNull any_value
first_value last_value nth_value row_number rank dense_rank percent_rank cume_dist ntile
lag lead lagInFrame leadInFrame
""")

#: Names ClickHouse also accepts in any letter case (``COUNT``, ``Sum``, ``IFNULL``): the
#: allowed names that system.functions marks case_insensitive, lower-cased.
CASE_INSENSITIVE: frozenset[str] = _names("""
abs acos age any_value asin atan atan2 avg bin ceil ceiling char_length coalesce concat corr
cos count countsubstrings crc32 date_trunc datediff datename degrees dense_rank exp
first_value flatten floor greatest hastokencaseinsensitive hex hypot if ifnull initcap instr
isnull lag last_value lead least left length ln locate log log10 log2 lower lpad makedate
makedate32 makedatetime makedatetime64 max mid min monthname not now now64 nth_value ntile
nullif percent_rank pi position positivemodulo pow power radians rand rank repeat replace
reverse right round row_number rpad sign sin space sqrt substr substring sum tan tanh
timezone today todecimalstring trunc truncate unhex upper
""")

#: Combinator suffixes an allowed aggregate may carry (``sumIf``, ``uniqArray``, ...).
COMBINATORS: tuple[str, ...] = (
    "If", "Array", "Distinct", "OrNull", "OrDefault", "ForEach", "Map", "ArgMin", "ArgMax",
)

# -------------------------------------------------------------- arguments to bound

#: Function -> index of its regular-expression (or LIKE pattern) argument: it must be a
#: constant string no longer than sql.max_regex_length. re2 runs in linear time, but
#: compiling a huge pattern happens inside one block, where no time limit is checked.
REGEX_ARGUMENT: dict[str, int] = {
    "match": 1, "extract": 1, "extractAll": 1, "extractGroups": 1,
    "extractAllGroupsHorizontal": 1, "extractAllGroupsVertical": 1, "replaceRegexpOne": 1,
    "replaceRegexpAll": 1, "splitByRegexp": 0, "countMatches": 1,
    "countMatchesCaseInsensitive": 1, "regexpExtract": 1, "like": 1, "notLike": 1,
    "ilike": 1, "notILike": 1,
}

#: Function -> indexes of arguments that set the size of what it builds: each must be a
#: constant integer no larger than sql.max_generated_elements, so no single value (one
#: row, one array) can outgrow the limits ClickHouse checks between blocks.
SIZE_ARGUMENTS: dict[str, tuple[int, ...]] = {
    "repeat": (1,), "space": (0,), "leftPad": (1,), "rightPad": (1,), "leftPadUTF8": (1,),
    "rightPadUTF8": (1,), "lpad": (1,), "rpad": (1,), "arrayWithConstant": (0,),
    "arrayResize": (1,), "toFixedString": (1,), "range": (0, 1, 2),
}

#: Table functions: only ``numbers``, whose arguments are bounded like SIZE_ARGUMENTS.
TABLE_FUNCTIONS: frozenset[str] = frozenset({"numbers"})


_SPELLING = {n.lower(): n for n in SCALAR_FUNCTIONS | AGGREGATE_FUNCTIONS
             if n.lower() in CASE_INSENSITIVE}


def canonical(name: str) -> str:
    """``name`` as the allow-list spells it (``NULLIF`` -> ``nullIf``, ``COUNT`` -> ``count``)
    when ClickHouse accepts it in any case; otherwise ``name`` unchanged."""
    return _SPELLING.get(name.lower(), name)


def aggregate_base(name: str) -> str | None:
    """The allowed aggregate ``name`` is built on, after stripping combinators, or None."""
    name = canonical(name)
    if name in AGGREGATE_FUNCTIONS:
        return name
    for suffix in COMBINATORS:
        if name.endswith(suffix) and len(name) > len(suffix):
            base = aggregate_base(name[: -len(suffix)])
            if base is not None:
                return base
    return None


def is_allowed(name: str) -> bool:
    """Whether a query may call the function ``name`` (exact ClickHouse spelling)."""
    return canonical(name) in SCALAR_FUNCTIONS or aggregate_base(name) is not None
