#!/bin/sh
# Build harbor: compile src/ into build/classes and package build/harbor.jar.
# Needs a JDK 17+ (javac and jar on PATH, or JAVA_HOME set). Run from anywhere:
#   sh build.sh
# then start the service from this directory with `java -jar build/harbor.jar`.
set -eu
cd "$(dirname "$0")"

if [ -n "${JAVA_HOME:-}" ]; then
    JAVAC="$JAVA_HOME/bin/javac"
    JAR="$JAVA_HOME/bin/jar"
else
    JAVAC=javac
    JAR=jar
fi

rm -rf build
mkdir -p build/classes
# Compiling a few files is all JVM start-up: C1 only and the serial GC halve the time.
# shellcheck disable=SC2046  # the file list is split on purpose; paths have no spaces
"$JAVAC" -J-XX:TieredStopAtLevel=1 -J-XX:+UseSerialGC --release 17 -encoding UTF-8 \
    -d build/classes $(find src -name '*.java' | sort)
"$JAR" --create --file build/harbor.jar --main-class harbor.Main -C build/classes .
echo "built build/harbor.jar"
